"""The one config object of the platform.

Structured dataclasses hold every default (the single source of truth); the YAML presets under
`configs/` only say how a preset differs from these defaults. `load_config(preset, overrides)`
merges defaults <- preset <- dotlist overrides and validates keys and types, so a typo or a wrong
type fails here, naming the key, instead of deep inside training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

_PACKAGE_DIR = Path(__file__).resolve().parent
# the presets: configs/ of the source tree, or vatt/configs/ (package data) when installed
CONFIG_DIR = (_PACKAGE_DIR / "configs" if (_PACKAGE_DIR / "configs").is_dir()
              else _PACKAGE_DIR.parent / "configs")


DEFAULT_PRESET = "tiny"  # the preset the CLI, the flows and sweeps start from when none is named


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and what is allowed."""


# ---------------------------------------------------------------------------------------------
# Model


class BackboneSharing(str, Enum):
    specific = "specific"  # one backbone per modality (BBS / MBS / LBS)
    agnostic = "agnostic"  # one shared Transformer for all modalities (VATT-MA)


class DropTokenSampling(str, Enum):
    batch = "batch"  # reference code: one random permutation shared by the whole batch
    sample = "sample"  # an independent subset per sample


@dataclass
class EncoderConfig:
    """A Transformer stack. `size` picks a named row of vatt.model.SIZES; a field set here
    overrides that row (e.g. `model.video.num_layers=6`)."""

    size: str = "base"
    num_layers: Optional[int] = None
    d_model: Optional[int] = None
    mlp_dim: Optional[int] = None
    num_heads: Optional[int] = None

    def check(self, key: str) -> None:
        from vatt.sizes import SIZES  # torch-free, so loading a config does not import torch

        if self.size not in SIZES:
            raise ConfigError(f"{key}.size='{self.size}' is not a known size. "
                              f"Allowed: {', '.join(SIZES)}")


def _check_drop_rate(key: str, rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"{key}.drop_rate={rate} is outside [0, 1): it is the share of tokens "
                          "dropped (0.5 keeps half); use e.g. 0.0, 0.25, 0.5 or 0.75")


@dataclass
class VideoModelConfig(EncoderConfig):
    size: str = "medium"
    patch_size: list[int] = field(default_factory=lambda: [4, 16, 16])  # (t, h, w)
    drop_rate: float = 0.5  # DropToken: share of patch tokens *dropped* in training

    def check(self, key: str) -> None:
        super().check(key)
        _check_drop_rate(key, self.drop_rate)


@dataclass
class AudioModelConfig(EncoderConfig):
    size: str = "base"
    patch_size: int = 128  # waveform samples per token
    drop_rate: float = 0.5
    # a constant gain on the waveform before the tokenizer (1 = the spec): recorded audio sits
    # far below full scale, so its tokens start small (BENCHMARKS.md, "Learning signal")
    input_scale: float = 1.0

    def check(self, key: str) -> None:
        super().check(key)
        _check_drop_rate(key, self.drop_rate)
        if not self.input_scale > 0:
            raise ConfigError(f"{key}.input_scale={self.input_scale} must be positive: it "
                              "multiplies the waveform before the tokenizer (1: the spec's input)")


@dataclass
class TextModelConfig(EncoderConfig):
    size: str = "small"
    embedding_dim: int = 300
    # word2vec-format file (text or binary) for the frozen table; None trains the embeddings
    word2vec_path: Optional[str] = None
    relative_num_buckets: int = 32
    relative_max_distance: int = 64


@dataclass
class HeadsConfig:
    """MMV "fine and coarse" common-space projection (spec section 5)."""

    va_dim: int = 512
    vt_dim: int = 256
    # paper: BN after the audio/text heads; reference code: none (spec default: code)
    bn_after_audio_text: bool = False
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5


@dataclass
class ModelConfig:
    sharing: BackboneSharing = BackboneSharing.specific
    video: VideoModelConfig = field(default_factory=VideoModelConfig)
    audio: AudioModelConfig = field(default_factory=AudioModelConfig)
    text: TextModelConfig = field(default_factory=TextModelConfig)
    # the one Transformer of the modality-agnostic model (sharing=agnostic)
    shared: EncoderConfig = field(default_factory=lambda: EncoderConfig(size="medium"))
    agnostic_output_dim: int = 1024  # MA post-projection width
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    dropout: float = 0.1  # residual, MLP and position dropout
    attention_dropout: float = 0.1
    droptoken_sampling: DropTokenSampling = DropTokenSampling.batch
    layer_norm_eps: float = 1e-6
    init_std: float = 0.02

    def check(self) -> None:
        for name in ("video", "audio", "text", "shared"):
            getattr(self, name).check(f"model.{name}")


@dataclass
class LossConfig:
    temperature: float = 0.07
    va_weight: float = 1.0
    vt_weight: float = 1.0
    # paper: plain sum NCE + MIL-NCE; reference code divides the sum by 2
    average_pair_losses: bool = False


# ---------------------------------------------------------------------------------------------
# Data: input geometry is read by the model too (position tables follow the input grid)


class SyntheticCue(str, Enum):
    """What the generated default dataset's sound and captions follow (vatt.data.synthetic)."""
    colour = "colour"  # the sound kind follows the colour; captions name colour, shape, motion
    motion = "motion"  # the sound kind and the captions follow the motion only


class CropStyle(str, Enum):
    inception = "inception"  # paper: random resized crop (area 0.08-1, aspect 0.5-2)
    vgg = "vgg"  # reference code: resize + scale jitter


@dataclass
class IngestConfig:
    """`vatt ingest`: how raw sources become shards (vatt/data/ingest.py)."""

    # stored clip length in seconds; None: twice the model window (room for temporal jitter)
    clip_seconds: Optional[float] = None
    # stored frames are resized to this short side (aspect kept); None: data.frame_size
    short_side: Optional[int] = None
    # stored clips are MJPEG (x264 output varies with heap contents: not byte-reproducible);
    # quantiser ceiling, 1 (best, largest) to 31
    video_qmax: int = 4
    media_per_shard: int = 16  # raw media files per shard (a shard is the unit of re-use)
    num_workers: int = 2  # processes decoding and encoding
    # seconds a raw file's decode may go without decoding anything (a frame or audio block; a
    # slow real file does so many times a second) before its worker is killed and the file
    # quarantined: a decoder stuck in a loop, a read that never returns
    decode_timeout_s: float = 300.0
    max_bad_fraction: float = 0.1  # fail the run when a larger share of items is quarantined
    ucf101_split: int = 1  # trainlist0N/testlist0N
    esc50_test_fold: int = 5  # the other folds train
    # share of the official training items held out as split `val` (MiT, ImageNet, AudioSet's
    # balanced list), chosen by a stable hash of the item key, so tuning never reads `test`
    holdout_fraction: float = 0.1
    synthetic_seed: int = 0
    # what the generated scenes' sound and captions follow: `colour` is learnable on the `tiny`
    # CPU budget, `motion` is not (BENCHMARKS.md, "Learning signal", versions 4 and 5)
    synthetic_cue: SyntheticCue = SyntheticCue.colour
    synthetic_scale: float = 1.0  # multiplies the default number of generated clips

    def check(self) -> None:
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(
                f"data.ingest.holdout_fraction={self.holdout_fraction} is outside [0, 1): it is "
                "the share of the training items held out as split val (0.1 holds out a tenth; "
                "0 none)")
        if not self.decode_timeout_s > 0:
            raise ConfigError(
                f"data.ingest.decode_timeout_s={self.decode_timeout_s} must be positive: it is how "
                "long a raw file's decode may go without decoding anything before the file is "
                "quarantined (300 s by default; raise it for media on a very slow filesystem)")


@dataclass
class DataConfig:
    num_frames: int = 32
    fps: float = 10.0
    frame_size: int = 224
    sample_rate: int = 48000
    max_text_tokens: int = 16
    num_text_candidates: int = 5
    vocab_size: int = 65536  # 2^16 words, pad id 0
    crop: CropStyle = CropStyle.inception
    crop_area: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_aspect: list[float] = field(default_factory=lambda: [0.5, 2.0])
    color_jitter_prob: float = 0.8
    brightness: float = 32.0 / 255.0
    saturation: float = 0.4
    contrast: float = 0.4
    hue: float = 0.2
    audio_noise_std: float = 0.01  # times the clip's max abs amplitude
    path: str = "data"  # ingested shards: a folder or s3:// prefix
    # where data versions are published for jobs on a cluster (vatt.data.publish):
    # <versions_uri>/<version>/; an s3:// prefix, e.g. s3://BUCKET/datasets. None: not published
    versions_uri: Optional[str] = None
    eval_num_windows: int = 4  # evaluation windows per clip, spread evenly over it
    ingest: IngestConfig = field(default_factory=IngestConfig)

    @property
    def clip_seconds(self) -> float:
        return self.num_frames / self.fps

    @property
    def audio_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    def check(self) -> None:
        self.ingest.check()


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class OptimConfig:
    lr_peak: float = 1e-4
    lr_end: float = 5e-5
    warmup_steps: int = 10000  # paper; the reference code uses 5000
    total_steps: int = 500000
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7
    weight_decay: float = 0.0


@dataclass
class ValidationConfig:
    """Zero-shot retrieval on a held-out validation split, measured during pretraining every
    `every` steps (0: never) on the first worker and reported with the training rows as
    `val_tv_MRR` (text->video), `val_va_MRR` (video->audio), their mean `val_MRR`, and R@1/R@10.
    It is what sweeps tune on; the test splits stay with reports and the promotion gate."""

    every: int = 0
    dataset: str = "synthetic-msrvtt"  # an ingested dataset with video, audio and captions
    split: str = "val"  # never "test": that is what reports and the promotion gate measure
    num_windows: int = 2  # evenly spread windows per video, averaged as in evaluation
    batch_size: int = 32

    def check(self) -> None:
        if self.every < 0 or self.num_windows < 1 or self.batch_size < 1:
            raise ConfigError(
                f"train.validation: every={self.every} must be >= 0 (0: no validation), "
                f"num_windows={self.num_windows} and batch_size={self.batch_size} at least 1")
        if self.split == "test":
            raise ConfigError(
                "train.validation.split='test': validation (and the sweeps that tune on it) must "
                "not read the test split that reports and the promotion gate measure; use 'val' "
                "(or another held-out split of train.validation.dataset)")


class Precision(str, Enum):
    auto = "auto"  # bf16 where the device has it natively (CUDA; CPU with AVX512-BF16 or AMX)
    bf16 = "bf16"  # everywhere; on a CPU without AVX512-BF16/AMX emulated and slow (it warns)
    fp32 = "fp32"


@dataclass
class TrainConfig:
    """Pretraining with Ray Train (vatt.train). The per-worker batch is derived:
    global_batch_size / (num_workers * grad_accum), and must divide evenly."""

    global_batch_size: int = 2048
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    # Ray Train ScalingConfig
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # only read when use_gpu
    # TPU (Ray's ScalingConfig(use_tpu=True, topology, accelerator_type); TorchTrainer then uses
    # the `tpu_dist` backend of the torch_tpu package): one worker per TPU VM host, each with
    # tpus_per_worker chips; num_workers = hosts per slice x slices. Not testable on CPUs: see
    # README, "Kubernetes"
    use_tpu: bool = False
    tpu_topology: Optional[str] = None  # slice topology, e.g. "4x4" (gke-tpu-topology)
    tpu_accelerator_type: Optional[str] = None  # Ray's accelerator type, e.g. "TPU-V6E"
    tpus_per_worker: float = 4.0  # chips per host: only read when use_tpu
    # Ray Train RunConfig: run folder = <storage_path>/<run_name>; a local folder or s3://bucket/prefix
    storage_path: str = "runs"
    run_name: Optional[str] = None  # None: "<preset>-<timestamp>"; the same name again resumes
    checkpoint_every: int = 1000  # steps; a checkpoint is always written at the last step too
    keep_checkpoints: int = 3
    max_failures: int = 3  # worker-group restarts from the last checkpoint before giving up
    # how often Ray Train's controller polls its workers (sets RAY_TRAIN_HEALTH_CHECK_INTERVAL_S,
    # Ray's default 2 s): the end of a run is noticed within it (BENCHMARKS.md, "Issue 15")
    poll_interval_s: float = 0.5
    log_every: int = 50  # steps between ray.train.report of loss, lr, clips/s, data-wait share
    # micro-batches a thread of each worker reads ahead of training, across epochs: the next
    # epoch's start (Ray Data's restart, the shuffle buffer's refill) overlaps the last batches
    # of the one before instead of stalling every epoch. 0: read in the training thread. Each
    # held micro-batch is float32 video in host memory (at mbs about 19 MB per clip)
    read_ahead_batches: int = 8
    grad_accum: int = 1  # micro-batches per optimiser step
    # autocast dtype of the backbones and heads; the losses, BatchNorm statistics and the Adam
    # step stay fp32 (vatt.train.precision)
    precision: Precision = Precision.auto
    # torch.compile the model: off, as on CPUs its warm-up outweighs what it saves
    # (BENCHMARKS.md, "Issue 15"); unmeasured on GPU, try it there
    compile: bool = False
    dataset: str = "synthetic-howto100m"  # ingested dataset (folder under data.path) to pretrain on
    dataset_split: str = "train"  # split of that dataset
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def check(self) -> None:
        self.validation.check()
        if self.use_tpu and self.precision == Precision.bf16:
            raise ConfigError("train.precision=bf16 with train.use_tpu=true: bf16 autocast is "
                              "wired for CUDA and CPU only; set train.precision=auto or fp32")
        if self.use_tpu and self.use_gpu:
            raise ConfigError("train.use_tpu=true and train.use_gpu=true: a run trains on one "
                              "kind of accelerator; set one of them to false")
        if self.use_tpu and self.num_workers > 1 and not (self.tpu_topology
                                                          and self.tpu_accelerator_type):
            raise ConfigError(
                f"train.use_tpu=true with train.num_workers={self.num_workers} needs the slice: "
                "set train.tpu_topology (e.g. 4x4) and train.tpu_accelerator_type (e.g. TPU-V6E), "
                "as in k8s/overlays/tpu")


class AudiosetTrain(str, Enum):
    """The AudioSet train list `audio_finetune` reads (vatt.evaluate.tasks.AUDIOSET_TRAIN)."""
    balanced = "balanced"  # split train
    unbalanced = "unbalanced"  # split train_unbalanced
    both = "both"


class Device(str, Enum):
    """Where feature extraction and fine-tuning run (vatt.evaluate.features.resolve_device)."""
    auto = "auto"  # cuda when a GPU is visible, else the CPU
    cpu = "cpu"
    cuda = "cuda"  # the first visible GPU (CUDA_VISIBLE_DEVICES picks which)


@dataclass
class ProbeConfig:
    """The linear probe (vatt.evaluate.probes): the reference's low-rank classifier, Adam."""

    rank: int = 128
    lr: float = 5e-4
    epochs: int = 100
    batch_size: int = 256
    weight_decay: float = 0.0

    def check(self) -> None:
        if min(self.rank, self.epochs, self.batch_size) < 1 or not self.lr > 0:
            raise ConfigError(
                f"eval.probe: rank={self.rank}, epochs={self.epochs} and batch_size="
                f"{self.batch_size} must be at least 1 and lr={self.lr} positive")
        if self.weight_decay < 0:
            raise ConfigError(f"eval.probe.weight_decay={self.weight_decay}: use 0 or more "
                              "(0: no weight decay)")


@dataclass
class FinetuneConfig:
    """Fine-tuning (action_finetune, audio_finetune, image_finetune; vatt.evaluate.finetune):
    the spec's SGD momentum 0.9, lr 0.005, 2.5k warmup then cosine to 0, batch 64, label
    smoothing 0.1. The spec gives no step count: `steps` is this project's choice."""

    steps: int = 10000
    lr: float = 0.005
    warmup_steps: int = 2500
    batch_size: int = 64
    test_crops: int = 3  # the spec's test: 4 clips (data.eval_num_windows) x 3 crops
    # MiB of the shuffle buffer of training windows (4 batches, uint8 video as the loader gives
    # it: 4.6 MiB a window at the spec's input, so 222 windows); it must hold a batch
    shuffle_mb: float = 1024.0

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.warmup_steps < 0 or not self.lr > 0:
            raise ConfigError(
                f"eval.finetune: steps={self.steps} and batch_size={self.batch_size} must be at "
                f"least 1, warmup_steps={self.warmup_steps} 0 or more and lr={self.lr} positive")
        if self.test_crops < 1:
            raise ConfigError(
                f"eval.finetune.test_crops={self.test_crops}: fine-tuning tests on at least one "
                "crop per window (the spec's 3: left, centre, right)")
        if not self.shuffle_mb > 0:
            raise ConfigError(
                f"eval.finetune.shuffle_mb={self.shuffle_mb}: fine-tuning's shuffle buffer needs "
                "room for at least a batch of windows (default 1024 MiB)")


@dataclass
class PromotionConfig:
    """The promotion gate (vatt.evaluate.registry): promote a candidate when its `metric` beats
    the promoted model's, measured on the same clips with the same settings and code (else the
    promoted model is re-measured on the candidate's data first), by the larger margin."""

    # "<task>.<metric>" (the task's first dataset) or "<task>@<dataset>.<metric>". MRR uses
    # every rank: R@10 saturates on small sets
    metric: str = "text_video_retrieval.MRR"
    # the metric's run-to-run noise between equally good training runs (benchmarks/gate_noise.py
    # measures it for a preset); differences below it are none
    margin: float = 0.0
    # for metrics that are a mean over queries (MRR, R@k): at least this many standard errors
    # of the two models' paired per-query difference on this evaluation's queries
    noise_z: float = 2.0

    def check(self) -> None:
        for key in ("margin", "noise_z"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"eval.promotion.{key}={getattr(self, key)}: a margin is how "
                                  "much better a candidate must be; use 0 or more (0: not worse)")


@dataclass
class EvalConfig:
    """Downstream evaluation (spec section 7, vatt.evaluate) and the promotion gate."""

    # tasks of vatt.evaluate.tasks that always run (`vatt info` lists them); one whose data is
    # not ingested is an error. Each runs on every ingested dataset it accepts (eval.datasets)
    tasks: list[str] = field(default_factory=lambda: [
        "action_linear", "audio_linear", "text_video_retrieval", "video_audio_retrieval"])
    # tasks that run too when a dataset they accept is ingested (AudioSet, ImageNet; the
    # generated default dataset has both), else are listed as skipped in the results and the
    # report; schedules of eval.finetune.steps. `vatt evaluate --tasks` runs exactly the tasks named
    tasks_if_ingested: list[str] = field(default_factory=lambda: [
        "audio_finetune", "image_finetune"])
    # task -> dataset folders under data.path to run it on, in order (the first is what the
    # flat "<task>.<metric>" keys mean); a task not named runs on every ingested dataset of a
    # source it accepts, real before generated (vatt.evaluate.data)
    datasets: dict[str, list[str]] = field(default_factory=dict)
    audioset_train: AudiosetTrain = AudiosetTrain.balanced  # audio_finetune's train list
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    seed: int = 0  # of the probes' and fine-tuning's initialisation and data order
    batch_size: int = 32  # clips per forward pass when extracting features
    device: Device = Device.auto
    output_path: str = "artifacts/eval"  # reports: <output_path>/<run id>/; a folder or s3://
    registry_path: str = "artifacts/registry"  # the model registry; a folder or s3://

    def check(self) -> None:
        self.probe.check()
        self.finetune.check()
        self.promotion.check()


# ---------------------------------------------------------------------------------------------
# Cluster: where the flows train (vatt.cluster)


class TrainingTarget(str, Enum):
    local = "local"  # this machine's Ray, or the Ray cluster at RAY_ADDRESS
    kubernetes = "kubernetes"  # a KubeRay RayJob, submitted and followed by vatt.cluster


class Accelerator(str, Enum):
    cpu = "cpu"  # k8s/overlays/cpu: CPU workers only
    gpu = "gpu"  # k8s/overlays/gpu: nvidia.com/gpu node pool
    tpu = "tpu"  # k8s/overlays/tpu: GKE TPU slices


class CleanupPolicy(str, Enum):
    always = "always"  # delete the RayJob when it ends, whatever the outcome
    on_success = "on_success"  # keep a failed RayJob (and its logs) for inspection
    never = "never"


@dataclass
class ClusterConfig:
    """`target=kubernetes`: pretraining runs as a KubeRay RayJob rendered from
    `<manifests>/overlays/<accelerator>` (kustomize), with this config shipped inside it; the
    client follows it until it ends and reads the results back from object storage, so
    train.storage_path and data.path must be s3:// there."""

    target: TrainingTarget = TrainingTarget.local
    accelerator: Accelerator = Accelerator.gpu
    namespace: str = "vatt"
    manifests: str = "k8s"  # the kustomize folder holding base/ and overlays/
    kube_context: Optional[str] = None  # kubeconfig context; None: current, or in-cluster
    # stop following (the job keeps running) after this, or at the RayJob's own deadline
    # (spec.activeDeadlineSeconds plus a start-up margin, vatt.cluster.jobs.follow_deadline)
    timeout_s: float = 7 * 24 * 3600.0
    poll_s: float = 10.0  # seconds between status reads
    # a RayJob with no status after this long: no KubeRay operator acts on it (said while following)
    operator_wait_s: float = 60.0
    api_attempts: int = 6  # tries of an API call on transient faults (refused, 429, 5xx)
    cleanup: CleanupPolicy = CleanupPolicy.on_success
    # the plan printed before a RayJob is created (vatt.cluster.plan): expected wall time =
    # training FLOPs / (accelerators x dense bf16 peak x plan_mfu). 0.35: a model FLOP
    # utilisation a well-fed bf16 Transformer reaches; measure yours (benchmarks/gpu_step.py)
    plan_mfu: float = 0.35
    # dense bf16 TFLOP/s per accelerator (per worker pod on the cpu overlay); None: the table
    # of vatt.cluster.plan, found by the overlay's node selector
    plan_peak_tflops: Optional[float] = None

    def check(self) -> None:
        if self.poll_s <= 0 or self.timeout_s <= 0 or self.api_attempts < 1:
            raise ConfigError(
                f"cluster: poll_s={self.poll_s} and timeout_s={self.timeout_s} must be positive "
                f"and api_attempts={self.api_attempts} at least 1")
        peak = self.plan_peak_tflops
        if not 0.0 < self.plan_mfu <= 1.0 or (peak is not None and peak <= 0):
            raise ConfigError(
                f"cluster.plan_mfu={self.plan_mfu} must be in (0, 1] (0.35: 35% of the peak) "
                f"and cluster.plan_peak_tflops={peak} positive or null")


# ---------------------------------------------------------------------------------------------
# Storage: object store access (vatt.storage) and data versioning (vatt.data.versioning)


@dataclass
class StorageConfig:
    """S3-compatible object storage. Credentials are never config: boto3 reads them from the
    environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a mounted Secret)."""

    # None: env AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL, then AWS itself
    endpoint_url: Optional[str] = None
    region: str = "us-east-1"
    max_attempts: int = 5  # boto3 "standard" retries of transient faults (throttling, 5xx, resets)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    dvc_remote: Optional[str] = None  # DVC remote for push/pull; None: the default in .dvc/config


@dataclass
class Config:
    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def check(self) -> None:
        """Raise a ConfigError naming the first value that cannot be used and how to fix it:
        each section checks its own fields, this the rules between sections."""
        for section in (self.model, self.data, self.train, self.eval, self.cluster):
            section.check()
        t, h, w = self.model.video.patch_size
        if self.data.num_frames % t or self.data.frame_size % h or self.data.frame_size % w:
            raise ConfigError(
                f"data.num_frames={self.data.num_frames} / data.frame_size="
                f"{self.data.frame_size} do not divide into model.video.patch_size={[t, h, w]}; "
                "pick multiples of the patch")
        if self.data.audio_samples % self.model.audio.patch_size:
            raise ConfigError(
                f"audio of {self.data.audio_samples} samples (data.sample_rate x clip length) is "
                f"not a multiple of model.audio.patch_size={self.model.audio.patch_size}")


# ---------------------------------------------------------------------------------------------
# Loading


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _allowed_keys(schema: DictConfig, dotted: str) -> list[str]:
    """Keys allowed at the parent of `dotted` (for error messages)."""
    node: Any = schema
    for part in dotted.split(".")[:-1]:
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
        else:
            break
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


# the evaluation settings before they were grouped: eval.<group>_<name> -> eval.<group>.<name>
RENAMED_KEYS: dict[str, str] = {
    f"eval.{group}_{name}": f"eval.{group}.{name}"
    for group, settings in (("probe", ProbeConfig), ("finetune", FinetuneConfig),
                            ("promotion", PromotionConfig))
    for name in settings.__dataclass_fields__}
# keys that went -> what to do instead: a preset, config file or override that sets one fails
# with this, and so does a saved config, but for the eval keys (from_dict)
RETIRED_KEYS: dict[str, str] = {
    "train.bf16": "set train.precision instead (bf16 true was auto, false was fp32)",
    "eval.promote_incomparable": "delete it: the gate never promotes on an incomparable number",
    "eval.finetune_cache_mb": "delete it: eval.finetune.shuffle_mb bounds fine-tuning's buffer",
    **{old: f"set {new} instead" for old, new in RENAMED_KEYS.items()},
}


def _explain(err: OmegaConfBaseException, schema: DictConfig, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    if isinstance(err, ConfigKeyError) and key in RETIRED_KEYS:
        return ConfigError(f"{source}: config key '{key}' is retired; {RETIRED_KEYS[key]}")
    if isinstance(err, ConfigKeyError):
        allowed = _allowed_keys(schema, key)
        return ConfigError(
            f"{source}: unknown config key '{key}'. Allowed keys here: {', '.join(allowed)}"
        )
    msg = str(err).splitlines()[0]
    node = OmegaConf.select(schema, key, throw_on_missing=False) if key != "?" else None
    expected = ""
    if isinstance(node, Enum):
        expected = f" Allowed values: {', '.join(m.value for m in type(node))}."
    elif node is not None:
        expected = f" Expected a value of type {type(node).__name__} (default {node!r})."
    return ConfigError(f"{source}: bad value for config key '{key}': {msg}.{expected}")


# Interpolations and secrets. OmegaConf resolves `${oc.env:VAR}` when the config object is built,
# and that object is what the platform saves (the checkpoint's config.yaml, the registry, reports,
# Prefect artifacts, a RayJob's config): a resolved environment variable would be written into
# all of them, readable by anyone who can start a run. So nothing that reaches a config resolves
# the environment: overrides (CLI, flow parameters, the UI) take no `${...}` at all, and a
# preset or config file may only refer to other config keys (`${train.optim.lr_peak}`, config
# values, saved resolved), never call a resolver (`${oc.env:...}`, `${oc.decode:...}`, ...).
CREDENTIALS_HINT = (
    "credentials are never config: the storage layer reads AWS_ACCESS_KEY_ID / "
    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, a mounted Secret) from the environment itself, and "
    "storage.endpoint_url falls back to AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL")
# `${` then, before the interpolation closes, a `:`: a resolver call, nested ones included
_RESOLVER_CALL = re.compile(r"\$\{[^}:]*:")


def check_override(item: str) -> None:
    """Refuse an override that holds an interpolation: it would be resolved (from the
    environment, for `${oc.env:...}`) and the value saved with the run."""
    if "${" in item:
        key = item.partition("=")[0]
        raise ConfigError(
            f"override '{item}': interpolations (${{...}}) are not resolved in overrides, because "
            "the resolved value would be saved with the run (its config, the registry, reports, "
            f"Prefect artifacts). Give the value itself, e.g. {key}=VALUE; {CREDENTIALS_HINT}")


def _strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of every string under a plain container."""
    if isinstance(node, dict):
        return [found for key, value in node.items()
                for found in _strings(value, f"{path}.{key}" if path else str(key))]
    if isinstance(node, list):
        return [found for i, value in enumerate(node) for found in _strings(value, f"{path}[{i}]")]
    return [(path, node)] if isinstance(node, str) else []


def _load_file(path: Path) -> DictConfig:
    """A preset or config file, parsed but not resolved; a resolver call in it is refused."""
    import yaml

    try:
        loaded = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()
        raise ConfigError(f"config file {path} does not parse as YAML ({' '.join(first[:3])}); "
                          "fix it, or write a fresh one with `vatt sweep` (best.yaml)") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} holds a list, not a mapping of "
                          "config keys (model:, data:, train:, ...)")
    calls = [key for key, value in _strings(OmegaConf.to_container(loaded, resolve=False))
             if _RESOLVER_CALL.search(value)]
    if calls:
        verb = "calls" if len(calls) == 1 else "call"
        raise ConfigError(
            f"config file {path}: {', '.join(calls[:5])} {verb} a resolver (e.g. ${{oc.env:...}}); "
            "a config file is not resolved against the environment, because the value would be "
            "saved with the run (its config, the registry, reports). Write the value itself "
            f"(a reference to another config key, ${{train.optim.lr_peak}}, is fine); "
            f"{CREDENTIALS_HINT}")
    return loaded


def load_config(preset: str | Path = DEFAULT_PRESET, overrides: list[str] | None = None) -> Config:
    """Build the validated config: defaults <- preset YAML <- dotlist overrides.

    `preset` is a name under configs/ (`tiny`, `mbs`, ...) or a path to a YAML file (a whole
    config, e.g. a sweep's best.yaml). Nothing is resolved against the environment (above).
    Returns a `Config` dataclass instance (attribute access, typed).
    """
    schema = OmegaConf.structured(Config)
    for item in overrides or []:
        check_override(item)
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            where = "" if path.is_absolute() else f" (in {Path.cwd()})"
            raise ConfigError(
                f"config file {path} does not exist{where}; "
                "give the path of a YAML config (e.g. the best.yaml of `vatt sweep`) or a "
                f"preset name: {', '.join(available_presets())}")
    else:
        path = CONFIG_DIR / f"{preset}.yaml"
        if not path.exists():
            raise ConfigError(
                f"unknown preset '{preset}': no file {path}. Available presets: "
                f"{', '.join(available_presets())}, or give the path of a YAML file"
            )
    merged = schema
    try:
        merged = OmegaConf.merge(merged, _load_file(path))
    except OmegaConfBaseException as err:
        raise _explain(err, schema, f"preset {path.name}") from None
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides or [])))
    except OmegaConfBaseException as err:
        raise _explain(err, schema, "override") from None
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    cfg.check()
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain, JSON/YAML-serialisable dict (enums as their values)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)  # type: ignore


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _saved_eval(evaluation: dict[str, Any]) -> dict[str, Any]:
    """A saved eval section as this version names it. Every checkpoint and promoted model
    trained before the groups holds eval.probe_rank, ...: those values move into their group
    (evaluation replaces them with its own settings anyway), and retired settings are dropped."""
    section: dict[str, Any] = {}
    for key, value in evaluation.items():
        new = RENAMED_KEYS.get(f"eval.{key}", "")
        if new:
            group, name = new.split(".")[1:]
            section.setdefault(group, {})[name] = value
        elif f"eval.{key}" not in RETIRED_KEYS:
            section[key] = value
    return section


def from_dict(data: dict[str, Any]) -> Config:
    """Inverse of `to_dict` (e.g. the config saved beside a checkpoint), validated."""
    schema = OmegaConf.structured(Config)
    if isinstance(data.get("eval"), dict):
        data = {**data, "eval": _saved_eval(data["eval"])}
    try:
        cfg: Config = OmegaConf.to_object(OmegaConf.merge(schema, data))  # type: ignore
    except OmegaConfBaseException as err:
        raise _explain(err, schema, "saved config") from None
    cfg.check()
    return cfg


def replace(cfg: Config, overrides: list[str]) -> Config:
    """A copy of `cfg` with dotlist overrides applied (used by sweeps and flows); an unknown
    key or a wrong type is a ConfigError naming it; an interpolation is refused (check_override)."""
    for item in overrides:
        check_override(item)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise _explain(err, OmegaConf.structured(Config), "override") from None
    return from_dict(OmegaConf.to_container(merged, enum_to_str=True))  # type: ignore[arg-type]


# Fields that name a local folder or file when they hold no scheme (`s3://...` stays as is)
LOCAL_PATH_FIELDS = ("data.path", "train.storage_path", "eval.output_path", "eval.registry_path",
                     "model.text.word2vec_path")


def with_absolute_paths(cfg: Config, root: Optional[Path] = None,
                        fields: tuple[str, ...] = LOCAL_PATH_FIELDS) -> Config:
    """A copy of `cfg` whose relative local paths (`fields`, by default every one) are made
    absolute against `root` (the current directory). Code that hands a config to other
    processes calls it first: a Ray Tune trial runs in its own working folder, where
    `data.path=data` means another folder."""
    root = Path(root or Path.cwd())
    structured = OmegaConf.structured(cfg)
    overrides = []
    for key in fields:
        value = OmegaConf.select(structured, key)
        if value and "://" not in value:
            absolute = str((root / Path(value).expanduser()).resolve())  # root / "/x" is "/x"
            if absolute != value:
                overrides.append(f"{key}={absolute}")
    return replace(cfg, overrides) if overrides else cfg


__all__ = [
    "Config", "ConfigError", "ModelConfig", "DataConfig", "TrainConfig", "LossConfig",
    "EncoderConfig", "BackboneSharing", "DropTokenSampling", "CropStyle", "Precision",
    "EvalConfig", "ProbeConfig", "FinetuneConfig", "PromotionConfig", "AudiosetTrain", "Device",
    "DEFAULT_PRESET", "RENAMED_KEYS", "RETIRED_KEYS",
    "load_config", "available_presets", "to_dict", "to_yaml", "from_dict", "replace",
    "with_absolute_paths", "LOCAL_PATH_FIELDS", "StorageConfig", "ClusterConfig", "TrainingTarget",
    "Accelerator", "CleanupPolicy", "check_override", "CREDENTIALS_HINT",
]
