# One image for the edges, the shield and the stub origin.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md config.yaml ./
COPY proxy ./proxy
COPY edge ./edge
COPY origin_stub ./origin_stub
RUN pip install --no-cache-dir '.[speed]'
EXPOSE 8080 8081 9080
CMD ["minicdn", "serve", "--config", "/app/config.yaml", "--listen", "0.0.0.0:8080"]
