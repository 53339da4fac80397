# The vatt image: the package installed from this checkout (not editable) with its dependencies,
# run as uid/gid 1000 like every pod under k8s/. One Dockerfile, three builds:
#
#   docker build --build-arg VARIANT=cpu -t REGISTRY/vatt:0.1.0-cpu .  # Prefect, submitters, CPU Ray
#   docker build --build-arg VARIANT=gpu -t REGISTRY/vatt:0.1.0-gpu .  # Ray on NVIDIA GPUs
#   docker build --build-arg VARIANT=tpu -t REGISTRY/vatt:0.1.0-tpu .  # Ray on TPU VMs
#
# and name them in k8s/image/images.yaml. No credentials go into the image: object-store keys
# come from the Secret vatt-object-store at run time.
FROM python:3.11-slim

# cpu: torch's CPU wheels; gpu: PyPI's default torch (CUDA); tpu: CPU torch plus torch_tpu
# (Ray Train's tpu_dist backend) and libtpu
ARG VARIANT=cpu
ARG TORCH_VERSION=2.14.1

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# wget: KubeRay's readiness and liveness probes of Ray pods call it; PyAV's wheels bring ffmpeg
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# kubectl: a flow run in the cluster with cluster.target=kubernetes renders its RayJob from k8s/
# with `kubectl kustomize` (checked against the release's published SHA-256)
ARG KUBECTL_VERSION=v1.32.4
RUN wget -q "https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/amd64/kubectl" \
         "https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/amd64/kubectl.sha256" \
    && echo "$(cat kubectl.sha256)  kubectl" | sha256sum --check \
    && install -m 0755 kubectl /usr/local/bin/kubectl && rm kubectl kubectl.sha256

RUN groupadd --gid 1000 vatt \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/vatt --shell /bin/bash vatt

# torch first, from the variant's index, so that installing the package finds it satisfied
RUN case "$VARIANT" in \
      cpu|tpu) pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu ;; \
      gpu) pip install "torch==${TORCH_VERSION}" ;; \
      *) echo "VARIANT must be cpu, gpu or tpu, not '${VARIANT}'" >&2; exit 1 ;; \
    esac \
    && if [ "$VARIANT" = tpu ]; then pip install "torch-tpu==0.2.*"; fi

# the package and the Prefect Kubernetes worker (the k8s extra); the source does not stay. The
# flows (flows/) and search spaces (tuning/) are packages of the wheel: a flow run's pod loads
# its deployment's module-path entrypoint (flows.retrain.retrain) from here
COPY . /tmp/vatt-src
RUN pip install "/tmp/vatt-src[k8s]" && rm -rf /tmp/vatt-src

USER 1000:1000
ENV HOME=/home/vatt
# relative paths of the defaults (runs/, artifacts/, data/, k8s/) resolve in the user's home;
# the manifests travel with the image for flow runs that submit RayJobs (cluster.manifests=k8s),
# and prefect.yaml for `vatt deploy` run inside the cluster
# (`kubectl -n vatt exec deploy/vatt-prefect-worker -- vatt deploy`)
WORKDIR /home/vatt
COPY --chown=1000:1000 k8s /home/vatt/k8s
COPY --chown=1000:1000 prefect.yaml /home/vatt/prefect.yaml
CMD ["vatt", "--help"]
