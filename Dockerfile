# The router image: `docker compose up` builds it from this checkout.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY router ./router
COPY backends ./backends
COPY bench ./bench
COPY config ./config
RUN pip install --no-cache-dir .
EXPOSE 8080
# SIGTERM: the router stops accepting, lets requests in flight finish, then exits
STOPSIGNAL SIGTERM
CMD ["ctxroute", "serve", "--config", "/app/config/router.yaml"]
