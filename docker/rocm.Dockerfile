# Training image on a ROCm PyTorch base: the patched megatron-core wheel, built inside the image
# for the image's own Python, and primus_runtime, over the base image's torch.
#   docker build -f docker/rocm.Dockerfile -t primus-megatron:rocm .
#   docker build -f docker/rocm.Dockerfile --build-arg BASE_IMAGE=<image> --build-arg UPSTREAM_SHA=<sha> .
# The steps live in docker/build-wheels.sh and docker/install-wheels.sh (tests run them in a
# fresh venv); docker/rocm.Dockerfile and docker/cuda.Dockerfile differ only in BASE_IMAGE.
ARG BASE_IMAGE=rocm/pytorch:latest

FROM ${BASE_IMAGE} AS wheels
ARG PYTHON=python3
ARG UPSTREAM_SHA=""
ARG PATCHSET=""
WORKDIR /src
COPY . /src
RUN PYTHON="${PYTHON}" SRC=/src OUT=/out BUILD_VENV=/opt/primus-rewriter UPSTREAM_SHA="${UPSTREAM_SHA}" PATCHSET="${PATCHSET}" bash docker/build-wheels.sh

FROM ${BASE_IMAGE}
ARG PYTHON=python3
COPY --from=wheels /out /opt/primus/build
COPY docker/install-wheels.sh /opt/primus/install-wheels.sh
RUN PYTHON="${PYTHON}" WHEELS=/opt/primus/build/wheels bash /opt/primus/install-wheels.sh
WORKDIR /workspace/primus
COPY configs configs
COPY scripts scripts
