# Not buildable on the development machines (no Docker engine); kept consistent with the code.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    WEBHOST_ENV=production LOG_FORMAT=json HOST=0.0.0.0 PORT=8080 DATA_DIR=/data
RUN useradd --create-home --uid 10001 webhost && mkdir -p /data && chown webhost /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sync_server ./sync_server
COPY storage ./storage
COPY api ./api
RUN pip install --no-cache-dir .
USER webhost
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
  CMD python -c "import urllib.request,os;urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\",\"8080\")}/healthz',timeout=2)"
ENTRYPOINT ["webhost-sync"]
CMD ["serve"]
