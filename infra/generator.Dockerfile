# The generator worker image for ECS Fargate (infra/generator.yaml, Runner=ecs).
# Build from the repository root after `make package`:
#   docker build -f infra/generator.Dockerfile -t palette-generator .
FROM public.ecr.aws/docker/library/python:3.12-slim
WORKDIR /app
COPY build/package/generator/requirements.txt /app/requirements.txt
RUN pip install --no-cache-dir -r /app/requirements.txt
COPY build/package/generator/ /app/
RUN useradd --uid 10001 --no-create-home worker
USER 10001
# ECS sends SIGTERM, then SIGKILL after the task's stopTimeout (120 s): the worker stops
# launching model calls, flushes the records it has and releases the job.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "services.generator.worker_main", "--aws"]
