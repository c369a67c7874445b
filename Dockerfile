# One image for the edges, the shield and the stub origin. No config file is needed: settings come
# from the built-in defaults and the environment (MINICDN_*, see the README), or from a file given
# with --config / MINICDN_CONFIG.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY proxy ./proxy
COPY edge ./edge
COPY origin_stub ./origin_stub
RUN pip install --no-cache-dir '.[speed]' && rm -rf /app/build /app/*.egg-info

# Not root: the edge needs no privilege (its ports are above 1024). The L2 goes to
# /var/lib/minicdn/.minicdn-cache (cache.dir's default, relative to the working directory), or to
# /var/cache/minicdn, owned by the user, for a volume (MINICDN_CACHE_DIR=/var/cache/minicdn).
RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/minicdn --create-home \
        --shell /usr/sbin/nologin minicdn \
    && install -d -o minicdn -g minicdn /var/cache/minicdn
USER minicdn
WORKDIR /var/lib/minicdn
ENV PYTHONUNBUFFERED=1
EXPOSE 8080 9080

# Readiness, not liveness: unhealthy (503) until its origin (and, in a cluster, Redis) has been
# reached once; an outage after that is "degraded", still healthy (server.readiness_strict: 503
# whenever a check fails; README "Readiness"). The liveness path,
# /.well-known/minicdn/health, stays for peers and for orchestrators that restart a dead process.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/.well-known/minicdn/ready', timeout=3)"]
CMD ["minicdn", "serve", "--listen", "0.0.0.0:8080"]
