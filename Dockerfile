# The image the Helm chart runs: `docker build -t <registry>/airflow-monitor:0.1.0 .`
# (Not built in CI here: these machines have no container engine.)
FROM python:3.11-slim
COPY pyproject.toml README.md /src/
COPY monitor /src/monitor
RUN pip install --no-cache-dir "/src[heal]" && rm -rf /src   # [heal]: the metadata DB drivers
# the chart's securityContext runs as this non-root user with a read-only root filesystem
USER 10001:10001
EXPOSE 9125/udp 9125/tcp 9102/tcp
ENTRYPOINT ["airflow-monitor"]
CMD ["serve"]
