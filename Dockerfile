# Multi-stage build: wheels are built in the first stage, the runtime image has no compiler.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY scoring_service scoring_service
COPY stage_router stage_router
COPY services services
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home leadscore
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER leadscore
ENV LEADSCORE_HTTP_HOST=0.0.0.0 LEADSCORE_HTTP_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz').status != 200)"
# SIGTERM: the batch in hand is committed, the outbox published, then the process exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["leadscore", "run"]
