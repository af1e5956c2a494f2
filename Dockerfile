# The image every pod in cluster/k8s/ and every node of cluster/launcher.yaml runs: Ray and Python as the
# project pins them (ray 2.60.0, Python 3.11), with adloop installed into the image's own Python, so jobs
# and the Serve app import it with no working_dir.
#
#   docker build -t ghcr.io/adloop/adloop:0.1.0 .
#   docker push ghcr.io/adloop/adloop:0.1.0
#
# That name is the `image:` of every manifest in cluster/ (and the launcher's docker.image); to use another
# registry, push the build there and change those lines. tests/cluster/test_manifests.py checks that the
# base image's Ray and Python match pyproject.toml and that cluster/ names this image at the project's version.
#
# The install is the README's (`make venv`): torch 2.13.0 first, then the project with its pinned
# dependencies, which leave that torch alone (pyproject accepts torch>=2.13,<2.15). One difference: the
# README installs the CPU build for laptops and CI; this image is for the GPU pods, so it installs torch
# 2.13.0 from PyPI, whose Linux x86_64 wheel is the CUDA build and brings its own CUDA runtime libraries
# (nvidia-* wheels). A node then needs only an NVIDIA driver recent enough for that CUDA release. The -gpu
# base (Ray on an NVIDIA CUDA image) is the one Ray runs GPU workloads on; the head pods run this image too
# and simply see no GPU. No dev extras: tests and linters stay out of the image.
FROM rayproject/ray:2.60.0-py311-gpu

ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install torch==2.13.0

WORKDIR /home/ray/adloop
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users cluster ./cluster
COPY --chown=ray:users engine ./engine
COPY --chown=ray:users jobs ./jobs
COPY --chown=ray:users rfnet ./rfnet
COPY --chown=ray:users rfft ./rfft
# A regular (not editable) install: the package lives in site-packages, so `python -m jobs.refresh` and
# `engine.serve:build_app` import from any directory, whatever a job's working directory is.
RUN pip install .
# The manifests read and write s3:// (the refresh's input and output, the scorer's allowed_uri_roots), which
# fsspec reaches through s3fs. It is not a project dependency (laptops and the tests never touch S3), so the
# image adds it at fsspec's pinned version, which s3fs requires exactly.
RUN pip install s3fs==2026.9.0 \
    && python -c "import torch, ray, s3fs, engine.serve, jobs.refresh; assert ray.__version__ == '2.60.0'" \
    && adloop --help > /dev/null

WORKDIR /home/ray
