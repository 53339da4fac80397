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


@dataclass
class VideoModelConfig(EncoderConfig):
    size: str = "medium"
    patch_size: list[int] = field(default_factory=lambda: [4, 16, 16])  # (t, h, w)
    drop_rate: float = 0.5  # DropToken: share of patch tokens *dropped* in training


@dataclass
class AudioModelConfig(EncoderConfig):
    size: str = "base"
    patch_size: int = 128  # waveform samples per token
    drop_rate: float = 0.5
    # a constant gain on the waveform before the tokenizer (1 = the spec). Recorded audio sits
    # far below full scale (the default dataset's RMS is ~0.1), so its tokens start ~10x smaller
    # than the LayerNorm'd positions they are added to; a long run grows the tokenizer to make up
    # for it, a CPU budget does not (BENCHMARKS.md, "Learning signal")
    input_scale: float = 1.0


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
    # what the generated scenes' sound and captions follow: `colour` (learnable on the `tiny` CPU
    # budget: retrieval and the audio probe learn, the motions do not) or `motion` (pairs can only
    # be matched by the motion; at the tiny budget nothing is learned, in 300 steps or 1200:
    # BENCHMARKS.md, "Learning signal", generator versions 4 and 5)
    synthetic_cue: SyntheticCue = SyntheticCue.colour
    synthetic_scale: float = 1.0  # multiplies the default number of generated clips


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
    # Ray's default 2 s, for the run): the end of a run is noticed within it. 0.5 s took
    # the default pretraining's shut-down from 4.6 s to under 1 s (BENCHMARKS.md, issue 15)
    poll_interval_s: float = 0.5
    log_every: int = 50  # steps between ray.train.report of loss, lr, clips/s, data-wait share
    # micro-batches a thread of each worker reads ahead of training, across epochs: the next
    # epoch's start (Ray Data's restart, the shuffle buffer's refill) overlaps the last batches
    # of the one before instead of stalling every epoch. 0: read in the training thread. Each
    # held micro-batch is float32 video in host memory (at mbs about 19 MB per clip)
    read_ahead_batches: int = 8
    grad_accum: int = 1  # micro-batches per optimiser step
    # autocast dtype of the backbones and heads; the losses, BatchNorm statistics and the Adam
    # step stay fp32 (vatt.train.precision). Replaces the former `train.bf16` (true -> auto)
    precision: Precision = Precision.auto
    # torch.compile the model. Off: on the 2-core AVX2 CPU it did not help (step 0.98x eager for
    # tiny, 1.09x for a width-768 backbone) and costs 35-76 s of warm-up per worker
    # (BENCHMARKS.md, "Issue 15"); unmeasured on GPU, try it there
    compile: bool = False
    dataset: str = "synthetic-howto100m"  # ingested dataset (folder under data.path) to pretrain on
    dataset_split: str = "train"  # split of that dataset
    validation: ValidationConfig = field(default_factory=ValidationConfig)


@dataclass
class EvalConfig:
    """Downstream evaluation (spec section 7, vatt.evaluate) and the promotion gate."""

    # tasks of vatt.evaluate.tasks that always run (`vatt info` lists them); one whose data is
    # not ingested is an error. Each runs on every ingested dataset it accepts (eval.datasets)
    tasks: list[str] = field(default_factory=lambda: [
        "action_linear", "audio_linear", "text_video_retrieval", "video_audio_retrieval"])
    # tasks that run too when a dataset they accept is ingested (AudioSet, ImageNet; the
    # generated default dataset has both), else are listed as skipped in the results and the
    # report; schedules of finetune_steps. `vatt evaluate --tasks` runs exactly the tasks named
    tasks_if_ingested: list[str] = field(default_factory=lambda: [
        "audio_finetune", "image_finetune"])
    # task -> dataset folders under data.path to run it on, in order (the first is what the
    # flat "<task>.<metric>" keys mean); a task not named runs on every ingested dataset of a
    # source it accepts, real before generated (vatt.evaluate.data)
    datasets: dict[str, list[str]] = field(default_factory=dict)
    # audio_finetune's train list: balanced (split train), unbalanced (train_unbalanced), both
    audioset_train: str = "balanced"
    # linear probe: the reference's low-rank classifier, Adam
    probe_rank: int = 128
    probe_lr: float = 5e-4
    probe_epochs: int = 100
    probe_batch_size: int = 256
    probe_weight_decay: float = 0.0
    # fine-tuning (action_finetune, audio_finetune, image_finetune): spec SGD momentum 0.9, lr
    # 0.005, 2.5k warmup then cosine to 0, batch 64, label smoothing 0.1; the spec gives no
    # step count, so finetune_steps is this project's choice
    finetune_steps: int = 10000
    finetune_lr: float = 0.005
    finetune_warmup_steps: int = 2500
    finetune_batch_size: int = 64
    finetune_test_crops: int = 3  # the spec's test: 4 clips (data.eval_num_windows) x 3 crops
    # fine-tuning's shuffle buffer of training windows (4 batches) holds at most this many MiB
    # (uint8 video as the loader gives it: 4.6 MiB a window at the spec's input, so 222
    # windows; audio 0.6 MiB); it must hold a batch
    finetune_shuffle_mb: float = 1024.0
    seed: int = 0
    batch_size: int = 32  # clips per forward pass when extracting features
    # where feature extraction and fine-tuning run: "auto" (cuda when a GPU is visible, else
    # cpu), "cpu", "cuda" or "cuda:<index>"
    device: str = "auto"
    output_path: str = "artifacts/eval"  # reports: <output_path>/<run id>/; a folder or s3://
    registry_path: str = "artifacts/registry"  # the model registry; a folder or s3://
    # promote when this metric is better than the promoted model's, measured on the same clips
    # with the same settings and code (else the promoted model is re-measured on the
    # candidate's data first), by the margin: "<task>.<metric>" (the task's first dataset) or
    # "<task>@<dataset>.<metric>". MRR uses every rank: R@10 saturates on small sets
    promotion_metric: str = "text_video_retrieval.MRR"
    # the metric's run-to-run noise between equally good training runs (benchmarks/gate_noise.py
    # measures it for a preset); differences below it are none
    promotion_margin: float = 0.0
    # and, for metrics that are a mean over queries (MRR, R@k), at least this many standard
    # errors of the two models' paired per-query difference on this evaluation's queries
    promotion_noise_z: float = 2.0


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


def _explain(err: OmegaConfBaseException, schema: DictConfig, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
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


def _check_values(cfg: Config) -> None:
    for modality in ("video", "audio"):
        rate = getattr(cfg.model, modality).drop_rate
        if not 0.0 <= rate < 1.0:
            raise ConfigError(
                f"model.{modality}.drop_rate={rate} is outside [0, 1): it is the share of "
                "tokens dropped (0.5 keeps half); use e.g. 0.0, 0.25, 0.5 or 0.75"
            )
    from vatt.sizes import SIZES  # torch-free, so loading a config does not import torch

    encoders = {"model.video": cfg.model.video, "model.audio": cfg.model.audio,
                "model.text": cfg.model.text, "model.shared": cfg.model.shared}
    for key, enc in encoders.items():
        if enc.size not in SIZES:
            raise ConfigError(
                f"{key}.size='{enc.size}' is not a known size. Allowed: {', '.join(SIZES)}"
            )
    t, h, w = cfg.model.video.patch_size
    if cfg.data.num_frames % t or cfg.data.frame_size % h or cfg.data.frame_size % w:
        raise ConfigError(
            f"data.num_frames={cfg.data.num_frames} / data.frame_size={cfg.data.frame_size} "
            f"do not divide into model.video.patch_size={[t, h, w]}; pick multiples of the patch"
        )
    val = cfg.train.validation
    if val.every < 0 or val.num_windows < 1 or val.batch_size < 1:
        raise ConfigError(
            f"train.validation: every={val.every} must be >= 0 (0: no validation), num_windows="
            f"{val.num_windows} and batch_size={val.batch_size} at least 1")
    if val.split == "test":
        raise ConfigError(
            "train.validation.split='test': validation (and the sweeps that tune on it) must not "
            "read the test split that reports and the promotion gate measure; use 'val' (or "
            "another held-out split of train.validation.dataset)")
    train = cfg.train
    if train.use_tpu and train.precision == Precision.bf16:
        raise ConfigError("train.precision=bf16 with train.use_tpu=true: bf16 autocast is "
                          "wired for CUDA and CPU only; set train.precision=auto or fp32")
    if train.use_tpu and train.use_gpu:
        raise ConfigError("train.use_tpu=true and train.use_gpu=true: a run trains on one kind "
                          "of accelerator; set one of them to false")
    if train.use_tpu and train.num_workers > 1 and not (train.tpu_topology
                                                        and train.tpu_accelerator_type):
        raise ConfigError(
            f"train.use_tpu=true with train.num_workers={train.num_workers} needs the slice: set "
            "train.tpu_topology (e.g. 4x4) and train.tpu_accelerator_type (e.g. TPU-V6E), as "
            "in k8s/overlays/tpu")
    if cfg.cluster.poll_s <= 0 or cfg.cluster.timeout_s <= 0 or cfg.cluster.api_attempts < 1:
        raise ConfigError(
            f"cluster: poll_s={cfg.cluster.poll_s} and timeout_s={cfg.cluster.timeout_s} must be "
            f"positive and api_attempts={cfg.cluster.api_attempts} at least 1")
    peak = cfg.cluster.plan_peak_tflops
    if not 0.0 < cfg.cluster.plan_mfu <= 1.0 or (peak is not None and peak <= 0):
        raise ConfigError(
            f"cluster.plan_mfu={cfg.cluster.plan_mfu} must be in (0, 1] (0.35: 35% of the peak) "
            f"and cluster.plan_peak_tflops={peak} positive or null")
    holdout = cfg.data.ingest.holdout_fraction
    if not 0.0 <= holdout < 1.0:
        raise ConfigError(
            f"data.ingest.holdout_fraction={holdout} is outside [0, 1): it is the share of the "
            "training items held out as split val (0.1 holds out a tenth; 0 none)")
    timeout = cfg.data.ingest.decode_timeout_s
    if not timeout > 0:
        raise ConfigError(
            f"data.ingest.decode_timeout_s={timeout} must be positive: it is how long a raw "
            "file's decode may go without decoding anything before the file is quarantined "
            "(300 s by default; raise it for media on a very slow filesystem)")
    if cfg.eval.finetune_test_crops < 1:
        raise ConfigError(
            f"eval.finetune_test_crops={cfg.eval.finetune_test_crops}: fine-tuning tests on at "
            "least one crop per window (the spec's 3: left, centre, right)"
        )
    for key in ("promotion_margin", "promotion_noise_z"):
        if not getattr(cfg.eval, key) >= 0:
            raise ConfigError(f"eval.{key}={getattr(cfg.eval, key)}: a margin is how much better "
                              "a candidate must be; use 0 or more (0: not worse)")
    if not cfg.eval.finetune_shuffle_mb > 0:
        raise ConfigError(
            f"eval.finetune_shuffle_mb={cfg.eval.finetune_shuffle_mb}: fine-tuning's shuffle "
            "buffer needs room for at least a batch of windows (default 1024 MiB)")
    if cfg.eval.audioset_train not in ("balanced", "unbalanced", "both"):
        raise ConfigError(
            f"eval.audioset_train='{cfg.eval.audioset_train}': AudioSet fine-tuning trains on "
            "balanced (split train), unbalanced (train_unbalanced) or both")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.eval.device):
        raise ConfigError(
            f"eval.device='{cfg.eval.device}' is not a device evaluation can run on: use auto "
            "(a GPU when one is visible, else the CPU), cpu, cuda or cuda:<index>"
        )
    if not cfg.model.audio.input_scale > 0:
        raise ConfigError(
            f"model.audio.input_scale={cfg.model.audio.input_scale} must be positive: it "
            "multiplies the waveform before the tokenizer (1 keeps the spec's input)"
        )
    if cfg.data.audio_samples % cfg.model.audio.patch_size:
        raise ConfigError(
            f"audio of {cfg.data.audio_samples} samples (data.sample_rate x clip length) is not "
            f"a multiple of model.audio.patch_size={cfg.model.audio.patch_size}"
        )


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


def load_config(preset: str | Path = "tiny", overrides: list[str] | None = None) -> Config:
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
    _check_values(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain, JSON/YAML-serialisable dict (enums as their values)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)  # type: ignore


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


_RETIRED_EVAL_KEYS = ("promote_incomparable", "finetune_cache_mb")


def from_dict(data: dict[str, Any]) -> Config:
    """Inverse of `to_dict` (e.g. the config saved beside a checkpoint), validated."""
    schema = OmegaConf.structured(Config)
    train = data.get("train")
    if isinstance(train, dict) and "bf16" in train:
        # configs saved before `train.precision` replaced `train.bf16` (true meant bf16 where
        # supported, i.e. auto) must still resume
        train = dict(train)
        train.setdefault("precision", "auto" if train.pop("bf16") else "fp32")
        data = {**data, "train": train}
    evaluation = data.get("eval")
    if isinstance(evaluation, dict) and set(evaluation) & set(_RETIRED_EVAL_KEYS):
        # configs saved before these settings went must still load (a checkpoint evaluated
        # again, a promoted model re-measured): promote_incomparable (the gate never promotes on
        # an incomparable number now), finetune_cache_mb (fine-tuning reads a fresh augmented
        # pass per epoch; eval.finetune_shuffle_mb bounds its buffer)
        data = {**data, "eval": {k: v for k, v in evaluation.items()
                                 if k not in _RETIRED_EVAL_KEYS}}
    try:
        cfg: Config = OmegaConf.to_object(OmegaConf.merge(schema, data))  # type: ignore
    except OmegaConfBaseException as err:
        raise _explain(err, schema, "saved config") from None
    _check_values(cfg)
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
    "load_config", "available_presets", "to_dict", "to_yaml", "from_dict", "replace",
    "with_absolute_paths", "LOCAL_PATH_FIELDS", "StorageConfig", "ClusterConfig", "TrainingTarget",
    "Accelerator", "CleanupPolicy", "check_override", "CREDENTIALS_HINT",
]
