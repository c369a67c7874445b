"""The benchmark scripts: bench/compare.py's wrk parser and generated configs, and both --help.

No server is started; nginx and varnishd (when installed) only check the generated configs.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "bench" / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


compare = _load_compare()

# Captured from `wrk -t1 -c64 -d3s --latency` against Varnish on this machine.
WRK_SAMPLE = """\
Running 3s test @ http://127.0.0.1:45999/reval/1k
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.12ms    4.63ms  44.65ms   92.85%
    Req/Sec    16.00k     4.13k   24.48k    76.67%
  Latency Distribution
     50%    2.87ms
     75%    4.38ms
     90%    7.11ms
     99%   27.90ms
  48152 requests in 3.03s, 64.68MB read
Requests/sec:  15903.96
Transfer/sec:     21.36MB
"""

WRK_ERRORS_SAMPLE = """\
Running 2s test @ http://127.0.0.1:8080/static/1k
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.00us  101.00us   1.52s    95.00%
    Req/Sec    70.10k     3.20k   75.00k    85.00%
  Latency Distribution
     50%  633.00us
     75%  700.12us
     90%    1.01ms
     99%    1.50s
  140200 requests in 2.00s, 160.00MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  70100.50
Transfer/sec:     80.00MB
"""


def test_parse_wrk_output() -> None:
    r = compare.parse_wrk(WRK_SAMPLE)
    assert r.rps == pytest.approx(15903.96)
    assert r.p50_ms == pytest.approx(2.87)
    assert r.p99_ms == pytest.approx(27.90)
    assert r.requests == 48152
    assert r.errors == 0


def test_parse_wrk_units_and_errors() -> None:
    r = compare.parse_wrk(WRK_ERRORS_SAMPLE)
    assert r.rps == pytest.approx(70100.5)
    assert r.p50_ms == pytest.approx(0.633)
    assert r.p99_ms == pytest.approx(1500.0)
    assert r.errors == 3 + 1 + 2 + 4


def test_parse_wrk_rejects_output_without_latency_distribution() -> None:
    without = "\n".join(line for line in WRK_SAMPLE.splitlines() if "%" not in line or "Latency " in line)
    with pytest.raises(ValueError, match="--latency"):
        compare.parse_wrk(without)
    with pytest.raises(ValueError):
        compare.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_duration_units() -> None:
    assert compare.duration_ms("250.00us") == pytest.approx(0.25)
    assert compare.duration_ms("3.00ms") == pytest.approx(3.0)
    assert compare.duration_ms("1.20s") == pytest.approx(1200.0)
    assert compare.duration_ms("1.00m") == pytest.approx(60000.0)


def test_wrk_command() -> None:
    cmd = compare.wrk_command("http://127.0.0.1:1/x", 5, 64, 1)
    assert cmd[:4] == ["wrk", "-t1", "-c64", "-d5s"] and "--latency" in cmd and cmd[-1].endswith("/x")
    with_script = compare.wrk_command("http://127.0.0.1:1/x", 2.5, 8, 2, Path("/tmp/s.lua"))
    assert "-d2.5s" in with_script and with_script[with_script.index("-s") + 1] == "/tmp/s.lua"


def test_scenarios_paths_and_script() -> None:
    names = [s.name for s in compare.SCENARIOS]
    assert len(names) == len(set(names))
    assert {"l1-hit-1k", "l2-hit-1k", "miss-1k", "reval-1k"} <= set(names)
    by_name = {s.name: s for s in compare.SCENARIOS}
    assert compare.scenario_paths(by_name["l1-hit-100k"], "nginx") == ["/static/100k"]
    assert compare.scenario_paths(by_name["l1-hit-1m"], "stub") == ["/bytes/1048576?max_age=86400"]
    reval = by_name["reval-1k"]
    paths = compare.scenario_paths(reval, "nginx")
    assert len(paths) == reval.keys > 1 and paths[:2] == ["/reval/1k?k=0", "/reval/1k?k=1"]
    assert compare.scenario_paths(reval, "stub")[1] == "/bytes/1024?max_age=0&k=1"
    script = compare.wrk_script(reval, "nginx")
    assert '"/reval/1k?k="' in script and f", {reval.keys}, 0" in script and "wrk.format(nil" in script
    files = compare.origin_files()
    assert files["static/1m"] == 1024 * 1024 and files["nostore/1k"] == 1024 and files["reval/1k"] == 1024
    assert len(compare.pattern(100 * 1024)) == 100 * 1024


def test_nginx_origin_config(tmp_path: Path) -> None:
    conf = compare.nginx_origin_conf(tmp_path, 18081)
    assert "daemon off;" in conf and "worker_processes 1;" in conf and "listen 127.0.0.1:18081;" in conf
    assert f"pid {tmp_path}/origin.pid;" in conf and "user " not in conf
    assert 'add_header Cache-Control "no-store";' in conf
    reval = conf[conf.index("location /reval/") :]
    # nginx stores a max-age=0 response only when X-Accel-Expires comes first
    assert reval.index("X-Accel-Expires") < reval.index('Cache-Control "max-age=0"')
    assert "stub_status" in conf
    assert "user root;" in compare.nginx_origin_conf(tmp_path, 18081, as_root=True)


def test_nginx_peer_config(tmp_path: Path) -> None:
    conf = compare.nginx_peer_conf(tmp_path, 18080, 18081, workers=2)
    assert "worker_processes 2;" in conf and "daemon off;" in conf
    assert f"proxy_cache_path {tmp_path}/nginx-cache" in conf
    assert "proxy_cache_revalidate on;" in conf and "proxy_cache_valid" not in conf
    assert "server 127.0.0.1:18081;" in conf and "keepalive 64;" in conf
    assert "add_header X-Cache $upstream_cache_status always;" in conf
    nostore = conf[conf.index("location /nostore/") :]
    assert "proxy_pass http://origin;" in nostore and "proxy_cache " not in nostore.split("}")[0]
    assert str(tmp_path) in conf and "/var/" not in conf


def test_varnish_vcl_and_proxy_config() -> None:
    vcl = compare.varnish_vcl(18081)
    assert vcl.startswith("vcl 4.1;") and '.port = "18081";' in vcl
    assert "set beresp.keep = 1h;" in vcl and "X-Was-304" in vcl
    l1 = compare.proxy_config(l1=True)
    l2 = compare.proxy_config(l1=False)
    assert l1["log"] == {"level": "WARNING", "access_log": False} and l1["admin"] == {"enabled": False}
    assert l1["cache"]["l1"]["enabled"] is True and l2["cache"]["l1"]["enabled"] is False


def test_proxy_config_is_accepted_by_the_proxy(tmp_path: Path) -> None:
    from proxy.config import load_config

    path = tmp_path / "bench.yaml"
    for l1 in (True, False):
        path.write_text(json.dumps(compare.proxy_config(l1=l1)))  # as bench/compare.py writes it
        cfg = load_config(path)
        assert cfg.cache.l1.enabled is l1 and cfg.log.access_log is False


def test_check_response() -> None:
    check = compare.check_response
    assert check("proxy", "hit", {"cache-status": 'bench;hit;ttl=60;detail="l1"'}) is None
    assert check("proxy", "hit", {"cache-status": "bench;fwd=miss;fwd-status=200;stored"}) is not None
    assert check("proxy", "reval", {"cache-status": "bench;fwd=stale;fwd-status=304;stored"}) is None
    assert check("proxy", "miss", {"cache-status": "bench;fwd=uri-miss;fwd-status=200"}) is None
    assert check("nginx", "hit", {"x-cache": "HIT"}) is None
    assert check("nginx", "reval", {"x-cache": "MISS"}) is not None
    assert check("nginx", "miss", {}) is None
    assert check("varnish", "hit", {"x-varnish": "32770 3"}) is None
    assert check("varnish", "hit", {"x-varnish": "32770"}) is not None
    assert check("varnish", "reval", {"x-varnish": "5", "x-was-304": "true"}) is None
    assert check("varnish", "miss", {"x-varnish": "5"}) is None


def test_summary_table_and_ratios() -> None:
    cells = {
        "proxy": compare.Cell(rps=1000, p50_ms=2, p99_ms=8, rss_mib=40),
        "nginx": compare.Cell(rps=4000, p50_ms=1, p99_ms=2, rss_mib=10),
    }
    ratios = compare.ratios(cells)
    assert ratios == {"proxy/nginx rps": "0.25", "proxy/nginx p99": "4.00"}
    result = {"name": "l1-hit-1k", "servers": {k: vars(v) for k, v in cells.items()}, "ratios": ratios}
    table = compare.summary_table([result])
    assert "| l1-hit-1k | 1000 / 4000 / - | 0.25 | - | 2.00 / 1.00 / - | 8.0 / 2.0 / - | 4.00 | - |" in table
    assert table.rstrip().endswith("| 40 / 10 / - | 0.00 / 0.00 / - | 0 |")


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_generated_configs(tmp_path: Path) -> None:
    for name, conf in (
        ("origin.conf", compare.nginx_origin_conf(tmp_path, 18081, as_root=True)),
        ("nginx.conf", compare.nginx_peer_conf(tmp_path, 18080, 18081, as_root=True)),
    ):
        (tmp_path / name).write_text(conf)
        cmd = [
            "nginx",
            "-t",
            "-q",
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "e.log"),
            "-c",
            str(tmp_path / name),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("varnishd") is None, reason="varnishd is not installed")
def test_varnish_compiles_the_generated_vcl() -> None:
    # varnishd reads the file as its own user: not under pytest's private tmp_path
    with tempfile.TemporaryDirectory(prefix="bench-vcl-") as name:
        tmp = Path(name)
        tmp.chmod(0o755)
        vcl = tmp / "bench.vcl"
        vcl.write_text(compare.varnish_vcl(18081))
        vcl.chmod(0o644)
        cmd = ["varnishd", "-C", "-f", str(vcl), "-n", str(tmp / "varnish")]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("script", ["compare.py", "hot_key_expiry.py"])
def test_help_exits_zero(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
