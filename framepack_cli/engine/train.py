"""Engine of `framepack train`: LoRA / LoHa / LoKr training of the FramePack DiT from latent and text caches.

Order of work (everything that can fail on input fails before a model loads):

1. checks: options not built yet, attention kernel, output folder (writable; files of another run under our
   names stop the run), the resume state, the caches (`framepack_cli.io.train_data`), the sample prompts;
2. sample prompts encoded (text encoders, VAE, SigLIP loaded and freed again);
3. DiT loaded (`--base_weights` merged first), frozen; the network attached; optimizer and scheduler;
4. the loop (`framepack_cli.engine.train_step` has the objective and its RNG draws); checkpoints, states,
   logs and samples on the way; Ctrl-C stops after the current step and saves;
5. the final `<output_name>.safetensors` (+ state) and a summary.

Multi-process (`accelerate launch --num_processes N`): each process takes every N-th batch of the epoch's
order; the network's gradients are averaged over the processes before clipping and the optimizer step, so
every process holds the same weights; only the main process writes files and logs.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framepack_cli.engine.progress import ProgressSink
from framepack_cli.engine.resources import oom_guard
from framepack_cli.errors import FramepackError, Interrupted, NotBuiltError
from framepack_cli.options.train import TrainOptions

UNBUILT = {  # option -> what it needs; refused in one line until then
    "huggingface_repo_id": "uploading to the Hugging Face Hub is not built; upload the saved files with "
                           "`huggingface-cli upload`",
    "resume_from_huggingface": "resuming from the Hub is not built; download the state folder first",
}
ATTENTION_MODES = {"sdpa": "sdpa", "flash_attn": "flash", "xformers": "xformers", "flash3": "flash3", None: "sdpa"}
SAVE_DTYPES = {None: "float32", "float": "float32", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
LOG_EVERY_FRACTION = 20  # a plain progress line every 1/20 of the run when stderr is not a terminal


def refuse_unbuilt(opts: TrainOptions) -> None:
    for name, why in UNBUILT.items():
        value = getattr(opts, name)
        if value not in (None, False, 0, "NO"):
            raise NotBuiltError(f"--{name}: not built yet in framepack train ({why})",
                                hint=f"run without --{name}")


# --------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class TrainResult:
    steps: int
    epochs: int
    seconds: float
    lora: Path | None
    checkpoints: list[Path] = field(default_factory=list)
    states: list[Path] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    logging_dir: Path | None = None
    losses: list[float] = field(default_factory=list)  # per optimizer step (the main process's)
    interrupted: bool = False


class _StopFlag:
    """First Ctrl-C: stop after the current step (and save); second: stop now."""

    def __init__(self, sink: ProgressSink) -> None:
        self.requested = False
        self.sink = sink
        self._old = None

    def _handler(self, signum, frame):  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.sink.message("Ctrl-C: stopping after this step and saving (press Ctrl-C again to stop at once)")

    @contextmanager
    def installed(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._old = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, self._old)


# --------------------------------------------------------------------------------------------------------------


def _resume_settings(opts: TrainOptions, data_items: int, batches: int) -> dict[str, Any]:
    """What must not change across a resume (else the run would not be the same run)."""
    import dataclasses

    from framepack_cli.engine.train_timesteps_show import timestep_settings

    return {
        "network_module": opts.network_module_name, "network_dim": opts.network_dim,
        "network_alpha": opts.network_alpha, "network_args": sorted(opts.network_args or []),
        "gradient_accumulation_steps": opts.gradient_accumulation_steps, "items": data_items,
        "batches_per_epoch": batches, **dataclasses.asdict(timestep_settings(opts)),
        "optimizer_type": opts.optimizer_type, "lr_scheduler": opts.lr_scheduler, "learning_rate": opts.learning_rate,
    }


def _resolve_resume(opts: TrainOptions) -> Path | None:
    from framepack_cli.engine.train_state import is_state_dir, newest_state

    if opts.resume is None:
        return None
    p = Path(opts.resume)
    if is_state_dir(p):
        return p
    if p.is_dir():
        found = newest_state(p, opts.output_name or "")
        if found is not None:
            return found
        raise FramepackError(f"--resume: {p} holds no training state of --output_name {opts.output_name}",
                             hint="give a <output_name>-...-state folder written with --save_state")
    raise FramepackError(f"--resume: {p} is not a training state folder",
                         hint="give a <output_name>-...-state folder written with --save_state")


def _mixed_precision(opts: TrainOptions, cuda: bool, sink: ProgressSink) -> str:
    mp = opts.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION") or "no"
    if mp not in ("no", "fp16", "bf16"):
        raise FramepackError(f"--mixed_precision: {mp!r} is not one of no, fp16, bf16 (from the accelerate config)")
    if opts.full_bf16 and mp != "bf16":
        raise FramepackError(f"--full_bf16 needs bf16 mixed precision, but the run uses {mp!r}",
                             hint="add --mixed_precision bf16")
    if mp == "fp16" and not cuda:
        sink.message("Warning: --mixed_precision fp16 needs CUDA; training in bf16 autocast on the CPU instead")
        return "bf16"
    return mp


def _check_logger(opts: TrainOptions) -> str | None:
    """The tracker name for accelerate, checked importable before any model loads."""
    log_with = opts.log_with or ("tensorboard" if opts.logging_dir else None)
    if log_with is None:
        return None
    import importlib.util

    need = {"tensorboard": [("tensorboard", "tensorboard")], "wandb": [("wandb", "wandb")],
            "all": [("tensorboard", "tensorboard"), ("wandb", "wandb")]}[log_with]
    for module, pip in need:
        if importlib.util.find_spec(module) is None:
            raise FramepackError(f"--log_with {log_with}: the {module} package is not installed",
                                 hint=f"pip install {pip} (or pip install \"framepack[logging]\")")
    return log_with


def _base_specs(opts: TrainOptions):
    from framepack_cli.models.lora import LoraSpec

    return [LoraSpec(p, m) for p, m in zip(opts.base_weights or [], opts.base_multipliers, strict=True)]


def _grad_allreduce(params: list, world: int) -> None:
    import torch
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


# --------------------------------------------------------------------------------------------------------------


def run(opts: TrainOptions, sink: ProgressSink | None = None) -> TrainResult | list[Path]:
    """Train with validated options (see the module doc). Returns what was written."""
    from framepack_cli.engine.progress import NullProgress

    sink = sink or NullProgress()
    if opts.show_timesteps is not None:
        from framepack_cli.engine.train_timesteps_show import show_timesteps

        return show_timesteps(opts, sink)
    refuse_unbuilt(opts)
    from framepack_cli.engine.launch import cpu_processes_requested, relaunch_on_cpus

    n = cpu_processes_requested()
    if n is not None:
        raise SystemExit(relaunch_on_cpus(n, sink))
    return Trainer(opts, sink).train()


class Trainer:
    def __init__(self, opts: TrainOptions, sink: ProgressSink) -> None:
        self.opts = opts
        self.sink = sink

    # ---- messages --------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        if self.main:
            self.sink.message(text)

    def wrote(self, path: Path) -> None:
        if self.main:
            self.sink.result(f"Wrote {path}")

    # ---- set-up ----------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        from framepack_cli.engine.train_data import build_train_data
        from framepack_cli.engine.train_files import refuse_foreign_outputs
        from framepack_cli.engine.train_state import TrainProgress, read_state
        from framepack_cli.io.writable import ensure_writable_dir
        from framepack_cli.models.transformer import resolve_attention

        o = self.opts
        attn = ATTENTION_MODES[o.attention]
        try:  # a missing kernel package: one line, before anything loads
            resolve_attention(attn, alternative="--sdpa")
        except FramepackError as e:
            from framepack_cli.engine.preflight import flag_message

            raise FramepackError(flag_message(e.message, attn, f"--{o.attention}"), hint=e.hint) from None
        log_with = _check_logger(o)
        cuda = torch.cuda.is_available()
        mp = _mixed_precision(o, cuda, self.sink)
        import datetime

        kwargs = []
        if o.ddp_timeout:
            kwargs.append(InitProcessGroupKwargs(timeout=datetime.timedelta(minutes=o.ddp_timeout)))
        self.logging_dir = None
        if log_with:
            stamp = time.strftime("%Y%m%d%H%M%S", time.localtime())
            self.logging_dir = Path(o.logging_dir) / f"{o.log_prefix or ''}{stamp}"
        if "WORLD_SIZE" not in os.environ:
            # accelerate keeps one process-wide state: a second run in the same process (the Python API, tests)
            # with other settings would be refused. Outside a process group there is nothing to keep.
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(reset_partial_state=True)
        acc = Accelerator(mixed_precision=mp, log_with=log_with,
                          project_dir=str(self.logging_dir) if self.logging_dir else None, kwargs_handlers=kwargs)
        self.acc = acc
        self.main = acc.is_main_process
        self.world, self.rank = acc.num_processes, acc.process_index
        self.device = acc.device if acc.device.type != "cpu" else torch.device("cpu")  # multi-CPU says cpu:0
        if o.cuda_allow_tf32 and cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if o.cuda_cudnn_benchmark and cuda:
            torch.backends.cudnn.benchmark = True

        self.output_dir = Path(o.output_dir)
        resume_dir = _resolve_resume(o)
        state = read_state(resume_dir) if resume_dir is not None else None
        if state is not None:
            seed = state.progress.seed
        else:
            seed = o.seed if o.seed is not None else secrets.randbelow(2**32)
        if state is not None and o.seed is not None and o.seed != state.progress.seed:
            raise FramepackError(f"--seed {o.seed}: the state {resume_dir} was trained with --seed "
                                 f"{state.progress.seed}", hint="drop --seed when resuming (it is read from the state)")
        self.seed = seed
        from accelerate.utils import set_seed

        set_seed(seed)

        video_mode = "f1" if o.f1 else "vanilla"
        data = build_train_data(o.dataset_config, seed=seed, video_mode=video_mode,
                                num_timestep_buckets=o.num_timestep_buckets, warn=self.say)
        self.data = data
        if o.one_frame and data.modes - {"one_frame"}:
            raise FramepackError("--one_frame: the dataset's caches are video sections "
                                 f"({', '.join(sorted(data.modes - {'one_frame'}))}); one-frame training needs "
                                 "image datasets cached with `framepack cache latents --one_frame`",
                                 hint="drop --one_frame, or re-cache an image dataset with --one_frame")
        if "latent_window_size" in o.model_fields_set and o.latent_window_size != data.latent_window_size:
            raise FramepackError(f"--latent_window_size {o.latent_window_size}: the caches were made with "
                                 f"fp_latent_window_size = {data.latent_window_size}",
                                 hint=f"use --latent_window_size {data.latent_window_size} or re-cache")
        self.sampler = None
        if o.sample_prompts:
            from framepack_cli.engine.train_samples import TrainingSampler

            self.sampler = TrainingSampler(o, self.device, self.sink)
            self.sampler.check()
        batches = len(data)
        self.per_rank = math.ceil(batches / self.world)
        accum = o.gradient_accumulation_steps
        self.updates_per_epoch = math.ceil(self.per_rank / accum)
        if o.max_train_epochs:
            self.max_steps = o.max_train_epochs * self.updates_per_epoch
        else:
            self.max_steps = o.max_train_steps
        self.epochs = math.ceil(self.max_steps / self.updates_per_epoch)

        self._check_optimizer()
        settings = _resume_settings(o, data.num_items, batches)
        if state is not None:
            before = json.loads(state.progress.options_digest or "{}")
            changed = [k for k in settings if k in before
                       and json.dumps(before[k], sort_keys=True) != json.dumps(settings[k], sort_keys=True)]
            if changed:
                k = changed[0]
                raise FramepackError(f"--resume: {resume_dir} was trained with {k} = {before[k]!r}, this run has "
                                     f"{settings[k]!r}", hint="resume with the options of the run that wrote it "
                                     "(--max_train_steps/--max_train_epochs may change)")
            progress = state.progress
        else:
            progress = TrainProgress(seed=seed, session_id=secrets.randbelow(2**32),
                                     options_digest=json.dumps(settings, sort_keys=True))
        self.progress = progress
        if self.main:
            refuse_foreign_outputs(self.output_dir, o.output_name, progress.written)
            ensure_writable_dir(self.output_dir, "--output_dir")
        if progress.step >= self.max_steps:
            raise FramepackError(f"--resume: {resume_dir} is at step {progress.step}, which reaches "
                                 f"--max_train_steps/--max_train_epochs ({self.max_steps} steps)",
                                 hint="raise --max_train_steps or --max_train_epochs to train further")

        if self.sampler is not None and self.main:
            self.sampler.prepare()

        self._build_model(state)
        return self._loop(state)

    def _check_optimizer(self) -> None:
        """Build the optimizer and schedule once over a stand-in parameter, before any model loads: a missing
        package or a bad argument is one line now, not after minutes of loading."""
        import torch

        from framepack_cli.engine.train_optim import make_optimizer, make_scheduler

        probe = [{"params": [torch.nn.Parameter(torch.zeros(1, device=self.device))], "lr": self.opts.learning_rate}]
        choice = make_optimizer(self.opts, probe, device=self.device, warn=lambda _: None)
        make_scheduler(self.opts, choice, total_steps=self.max_steps, num_processes=1, warn=lambda _: None)

    def _build_model(self, state) -> None:
        import torch

        from framepack_cli.engine.precision import model_dtype
        from framepack_cli.engine.train_optim import make_optimizer, make_scheduler
        from framepack_cli.models.lora.training import create_network
        from framepack_cli.models.transformer import load_dit

        o = self.opts
        self.dit_dtype = model_dtype("dit", o.dtype, self.device)
        from framepack_cli.models import block_swap

        n = o.blocks_to_swap or 0
        ring = o.block_swap_ring_size if o.block_swap_h2d_only else None
        swap = bool(n) and block_swap.swap_supported(self.device)
        if n and not swap:
            flags = f"{n} --block_swap_h2d_only" if ring else n
            self.say(block_swap.NO_CUDA_WARNING.format(n=flags, device=self.device.type))
        self.say(f"Loading DiT {o.dit}")
        loras = _base_specs(o) or None
        # With block swap the DiT loads to the CPU; the swapper moves all but the swapped blocks' Linear
        # weights to the GPU (before the LoRA modules are created, which then follow their Linear's device).
        fp8 = ("fp8_scaled" if o.fp8_scaled else "fp8") if o.fp8_base else None
        dit = load_dit(o.dit, device="cpu" if swap else self.device, dtype=self.dit_dtype,
                       attn_mode=ATTENTION_MODES[o.attention], split_attn=o.split_attn, loras=loras, fp8=fp8)
        if n:
            block_swap.check_blocks_to_swap(n, len(dit.transformer_blocks), len(dit.single_transformer_blocks))
        if swap:
            block_swap.enable_block_swap(dit, n, self.device, pinned=o.use_pinned_memory_for_block_swap,
                                         ring_size=ring)
            self.say(block_swap.describe(len(dit.transformer_blocks), len(dit.single_transformer_blocks), n,
                                         o.use_pinned_memory_for_block_swap, ring))
        for line in (getattr(dit, "lora_report", None) or []) + (getattr(dit, "fp8_report", None) or []):
            self.say(line)
        dit.requires_grad_(False)
        if o.gradient_checkpointing:
            dit.enable_training_checkpointing(cpu_offload=o.gradient_checkpointing_cpu_offload)
            dit.train()
        else:
            dit.eval()
        self.dit = dit
        net = create_network(o.network_module_name, dit, dim=o.network_dim, alpha=o.network_alpha,
                             dropout=o.network_dropout, network_args=o.network_kwargs, weights=o.network_weights,
                             dim_from_weights=o.dim_from_weights, warn=self.say)
        net.to(self.device)
        if o.full_bf16:
            import torch

            net.to(torch.bfloat16)
        if state is not None:
            net.load_state_dict({k: v.to(self.device) for k, v in state.network.items()})
        self.network = net
        if o.compile or o.dynamo_backend != "NO":
            from framepack_cli.models.compile import CompileSettings, compile_blocks

            # After the LoRA modules hook their Linears (the hooks are compiled with the blocks); with block swap
            # the Linear forwards stay eager, as in the reference.
            settings = CompileSettings.from_options(o)
            if compile_blocks(dit, settings, self.say, device=self.device, exclude_linear=swap) is not None:
                self.say(settings.describe())
        groups = net.param_groups(o.learning_rate)
        self.params = [p for g in groups for p in g["params"]]
        self.choice = make_optimizer(o, groups, device=self.device, warn=self.say)
        self.optimizer = self.choice.optimizer
        self.scheduler = make_scheduler(o, self.choice, total_steps=self.max_steps, num_processes=1, warn=self.say)
        if state is not None:
            self.optimizer.load_state_dict(state.optimizer)
            self.scheduler.load_state_dict(state.scheduler)
        self.scaler = None
        if self.acc.mixed_precision == "fp16":
            self.scaler = torch.amp.GradScaler(self.device.type)
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.acc.mixed_precision)
        n_params = sum(p.numel() for p in self.params)
        self.say(f"Network: {o.network_module_name}, {len(getattr(net, 'loras', []) or [])} modules, "
                 f"{n_params:,} trainable parameters; optimizer {self.choice.description}")

    # ---- saving ------------------------------------------------------------------------------------------
    def _metadata(self) -> dict[str, str]:
        from framepack_cli.engine.train_optim import scheduler_name
        from framepack_cli.models.lora.network import training_metadata

        o, p = self.opts, self.progress
        values = {
            "session_id": p.session_id, "training_started_at": self.started_at, "output_name": o.output_name,
            "learning_rate": self.choice.metadata_learning_rate, "num_train_items": self.data.num_items,
            "num_batches_per_epoch": len(self.data), "num_epochs": self.epochs,
            "gradient_checkpointing": o.gradient_checkpointing,
            "gradient_checkpointing_cpu_offload": o.gradient_checkpointing_cpu_offload,
            "gradient_accumulation_steps": o.gradient_accumulation_steps, "max_train_steps": self.max_steps,
            "lr_warmup_steps": o.lr_warmup_steps, "lr_scheduler": scheduler_name(o, self.choice),
            "base_model_version": "framepack", "network_module": o.network_module_name,
            "network_dim": self.network.dim, "network_alpha": self.network.alpha,
            "network_dropout": o.network_dropout, "mixed_precision": self.acc.mixed_precision, "seed": self.seed,
            "training_comment": o.training_comment, "optimizer": self.choice.description,
            "max_grad_norm": o.max_grad_norm, "fp8_base": o.fp8_base, "full_fp16": False, "full_bf16": o.full_bf16,
            "weighting_scheme": o.weighting_scheme, "logit_mean": o.logit_mean, "logit_std": o.logit_std,
            "mode_scale": o.mode_scale, "guidance_scale": o.guidance_scale,
            "timestep_sampling": o.timestep_sampling, "sigmoid_scale": o.sigmoid_scale,
            "discrete_flow_shift": o.discrete_flow_shift,
            "datasets": json.dumps(self.data.datasets_metadata()),
            "training_finished_at": time.time(), "steps": p.step, "epoch": p.epoch,
        }
        if o.network_args:
            values["network_args"] = json.dumps(o.network_kwargs)
        if Path(o.dit).exists():
            values["sd_model_name"] = Path(o.dit).name
        if o.vae:
            values["vae_name"] = Path(o.vae).name
        timesteps = None
        if o.min_timestep is not None or o.max_timestep is not None:
            timesteps = (o.min_timestep or 0, o.max_timestep if o.max_timestep is not None else 1000)
        meta = training_metadata(values, timestamp=time.time(), title=o.metadata_title or o.output_name,
                                 resolution=o.metadata_reso, no_metadata=o.no_metadata, author=o.metadata_author,
                                 description=o.metadata_description, license=o.metadata_license,
                                 tags=o.metadata_tags, timesteps=timesteps)
        if o.metadata_arch and not o.no_metadata:
            meta["modelspec.architecture"] = f"{o.metadata_arch}/lora"
        return meta

    def save_lora(self, stem: str) -> Path | None:
        import torch

        path = self.output_dir / f"{stem}.safetensors"
        if self.main:
            dtype = getattr(torch, SAVE_DTYPES[self.opts.save_precision])
            self.network.save_weights(path, dtype=dtype, metadata=self._metadata())
            if path.name not in self.progress.written:
                self.progress.written.append(path.name)
            self.wrote(path)
        self._barrier()
        return path

    def save_state(self, stem: str) -> Path | None:
        from framepack_cli.engine.train_state import save_state

        path = self.output_dir / f"{stem}-state"
        if self.main:
            from framepack_cli.io.writable import resource_error_for

            if path.name not in self.progress.written:
                self.progress.written.append(path.name)
            try:
                save_state(path, self.progress, self.network, self.optimizer, self.scheduler)
            except OSError as e:
                raise resource_error_for(e, "--output_dir", path) from None
            self.wrote(path)
        self._barrier()
        return path

    def _barrier(self) -> None:
        if self.world > 1:
            self.acc.wait_for_everyone()

    def _prune(self, entry: str) -> None:
        from framepack_cli.engine.train_files import remove_own

        if self.main and remove_own(self.output_dir, entry, self.progress.written):
            self.say(f"Removed {self.output_dir / entry} (--save_last_n_*)")

    def _step_saves(self, result: TrainResult) -> None:
        from framepack_cli.engine.train_files import step_stem, step_to_prune

        o, step = self.opts, self.progress.step
        if not o.save_every_n_steps or step % o.save_every_n_steps or step >= self.max_steps:
            return
        result.checkpoints.append(self.save_lora(step_stem(o.output_name, step)))
        old = step_to_prune(step, o.save_every_n_steps, o.save_last_n_steps)
        if old is not None:
            self._prune(f"{step_stem(o.output_name, old)}.safetensors")
        if o.save_state:
            result.states.append(self.save_state(step_stem(o.output_name, step)))
            old = step_to_prune(step, o.save_every_n_steps, o.save_last_n_steps_state or o.save_last_n_steps)
            if old is not None:
                self._prune(f"{step_stem(o.output_name, old)}-state")

    def _epoch_saves(self, result: TrainResult, epoch: int) -> None:
        """After epoch `epoch` (1-based), unless it is the last one (the final file replaces it)."""
        from framepack_cli.engine.train_files import epoch_stem, epoch_to_prune

        o = self.opts
        if not o.save_every_n_epochs or epoch % o.save_every_n_epochs or epoch >= self.epochs \
                or self.progress.step >= self.max_steps:
            return
        result.checkpoints.append(self.save_lora(epoch_stem(o.output_name, epoch)))
        old = epoch_to_prune(epoch, o.save_every_n_epochs, o.save_last_n_epochs)
        if old is not None:
            self._prune(f"{epoch_stem(o.output_name, old)}.safetensors")
        if o.save_state:
            result.states.append(self.save_state(epoch_stem(o.output_name, epoch)))
            old = epoch_to_prune(epoch, o.save_every_n_epochs, o.save_last_n_epochs_state or o.save_last_n_epochs)
            if old is not None:
                self._prune(f"{epoch_stem(o.output_name, old)}-state")

    # ---- sampling ------------------------------------------------------------------------------------------
    def _sample(self, result: TrainResult, *, epoch: int | None = None) -> None:
        if self.sampler is None:
            return
        if self.main:
            from framepack_cli.engine.train_optim import optimizer_eval, optimizer_train

            optimizer_eval(self.choice)
            was = self.network.training
            self.network.eval()
            try:
                result.samples += self.sampler.render(self.dit, step=self.progress.step, epoch=epoch,
                                                      network=self.network)
            finally:
                self.network.train(was)
                optimizer_train(self.choice)
        self._barrier()

    # ---- logging -------------------------------------------------------------------------------------------
    def _init_trackers(self) -> None:
        if self.logging_dir is None:
            return
        o = self.opts
        config = None
        if o.log_config:
            drop = {"wandb_api_key", "huggingface_token", "dit", "vae", "text_encoder1", "text_encoder2",
                    "image_encoder", "base_weights", "network_weights", "output_dir", "logging_dir"}
            config = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                      for k, v in o.model_dump().items() if k not in drop}
        init_kwargs = {}
        if o.log_tracker_config:
            import tomllib

            init_kwargs = tomllib.loads(Path(o.log_tracker_config).read_text(encoding="utf-8"))
        elif o.wandb_run_name:
            init_kwargs = {"wandb": {"name": o.wandb_run_name}}
        if o.log_with in ("wandb", "all"):
            os.environ.setdefault("WANDB_DIR", str(self.logging_dir))
            if o.wandb_api_key:
                import wandb

                wandb.login(key=o.wandb_api_key)
        if self.main:
            self.logging_dir.mkdir(parents=True, exist_ok=True)
        self.acc.init_trackers(o.log_tracker_name or "network_train", config=config, init_kwargs=init_kwargs)

    def _log(self, values: dict[str, float], step: int) -> None:
        if self.logging_dir is not None:
            self.acc.log(values, step=step)

    def _lr_logs(self) -> dict[str, float]:
        from framepack_cli.engine.train_optim import lr_logs

        return lr_logs(self.choice, self.scheduler)

    # ---- the loop ------------------------------------------------------------------------------------------
    def _loop(self, state) -> TrainResult:
        import torch

        from framepack_cli.engine.train_optim import optimizer_train
        from framepack_cli.engine.train_step import training_step
        from framepack_cli.io.train_data import EpochSampler, make_loader

        o, p = self.opts, self.progress
        self.started_at = time.time()
        result = TrainResult(steps=0, epochs=self.epochs, seconds=0.0, lora=None, logging_dir=self.logging_dir)
        if state is not None:
            from framepack_cli.engine.train_state import set_rng_states

            set_rng_states(state.rng)
            self.say(f"Resuming from {o.resume}: step {p.step} of {self.max_steps}, epoch {p.epoch + 1} "
                     f"of {self.epochs}")
        self._init_trackers()
        sampler = EpochSampler(self.data, rank=self.rank, world=self.world)
        loader = make_loader(self.data, sampler, workers=o.max_data_loader_n_workers,
                             persistent=o.persistent_data_loader_workers)
        accum = o.gradient_accumulation_steps
        from framepack_cli.engine.train_timesteps_show import timestep_settings

        tso = timestep_settings(o)
        warned: set[str] = set()

        def warn_once(text: str) -> None:
            if text not in warned:
                warned.add(text)
                self.say(f"Warning: {text}")

        if o.weighting_scheme in ("sigma_sqrt", "cosmap") and o.timestep_sampling != "sigma":
            warn_once(f"--weighting_scheme {o.weighting_scheme} with --timestep_sampling {o.timestep_sampling}: "
                      "the weights come from the nearest step of the 1000-step schedule")
        if o.scale_weight_norms and not hasattr(self.network, "max_norm_regularize"):
            warn_once("--scale_weight_norms has no effect on this network type")
        if o.sample_at_first and state is None:
            self._sample(result)
        optimizer_train(self.choice)
        self.network.train()
        epoch_losses: list[float] = []
        recent: list[float] = []
        stop = _StopFlag(self.sink)
        t0 = time.time()
        first_step = self.first_step = p.step
        start_sink = getattr(self.sink, "start_training", None)
        if self.main and start_sink is not None:
            start_sink(self.max_steps, p.step)
        accum_count = 0
        with stop.installed():
            try:
                while p.epoch < self.epochs and p.step < self.max_steps and not stop.requested:
                    epoch = p.epoch
                    sampler.set_epoch(epoch, start=p.position)
                    for batch in loader:
                        sync = accum_count + 1 == accum or p.position + 1 == self.per_rank
                        with oom_guard(f"training step {p.step + 1} (epoch {epoch + 1})", self.device,
                                       self._oom_hint()):
                            out = training_step(
                                self.dit, batch, seed=self.seed, step=p.step, settings=tso,
                                guidance_scale=o.guidance_scale,
                                device=self.device, dtype=self.dit_dtype, autocast_dtype=self.autocast,
                                on_warning=warn_once)
                            loss = out.loss / accum
                            (self.scaler.scale(loss) if self.scaler else loss).backward()
                        p.micro_step += 1
                        p.position += 1
                        accum_count += 1
                        value = float(out.loss.detach())
                        if not math.isfinite(value):
                            raise FramepackError(
                                f"the loss became {value} at step {p.step + 1} (epoch {epoch + 1})",
                                hint="lower --learning_rate, or use --mixed_precision bf16 instead of fp16")
                        recent.append(value)
                        epoch_losses.append(value)
                        if sync:
                            accum_count = 0
                            if self.world > 1:
                                _grad_allreduce(self.params, self.world)
                            if self.scaler:
                                self.scaler.unscale_(self.optimizer)
                            if o.max_grad_norm:
                                torch.nn.utils.clip_grad_norm_(self.params, o.max_grad_norm)
                            if self.scaler:
                                self.scaler.step(self.optimizer)
                                self.scaler.update()
                            else:
                                self.optimizer.step()
                            self.scheduler.step()
                            self.optimizer.zero_grad(set_to_none=True)
                            logs = {}
                            if o.scale_weight_norms and hasattr(self.network, "max_norm_regularize"):
                                norms = self.network.max_norm_regularize(o.scale_weight_norms)
                                if norms is not None:
                                    logs.update({"max_norm/keys_scaled": norms[0],
                                                 "max_norm/average_key_norm": norms[1],
                                                 "max_norm/max_key_norm": norms[2]})
                            p.step += 1
                            step_loss = sum(recent) / len(recent)
                            if self.world > 1:  # the logged loss is the mean over every process's samples
                                t = torch.tensor([step_loss], dtype=torch.float64)
                                torch.distributed.all_reduce(t)
                                step_loss = float(t) / self.world
                            recent.clear()
                            result.losses.append(step_loss)
                            window = epoch_losses[-max(1, self.per_rank):]
                            avg = sum(window) / len(window)
                            lrs = self._lr_logs()
                            logs.update({"loss/current": step_loss, "loss/average": avg, **lrs})
                            self._log(logs, p.step)
                            self._progress(p.step, step_loss, avg, lrs, epoch, t0, first_step)
                            if o.sample_every_n_steps and p.step % o.sample_every_n_steps == 0:
                                self._sample(result)
                            self._step_saves(result)
                            if p.step >= self.max_steps or stop.requested:
                                break
                    if p.position >= self.per_rank:  # the epoch is complete
                        p.epoch, p.position = epoch + 1, 0
                        if epoch_losses:
                            self._log({"loss/epoch": sum(epoch_losses) / len(epoch_losses)}, epoch + 1)
                        epoch_losses = []
                        self._epoch_saves(result, epoch + 1)
                        if o.sample_every_n_epochs and (epoch + 1) % o.sample_every_n_epochs == 0 \
                                and epoch + 1 < self.epochs:
                            self._sample(result, epoch=epoch + 1)
            except KeyboardInterrupt:
                stop.requested = True
                self._end_progress()
                raise Interrupted(f"Interrupted at step {p.step} of {self.max_steps} (second Ctrl-C); nothing more "
                                  "was saved") from None
        self._end_progress()
        result.steps = p.step
        result.seconds = time.time() - t0
        if stop.requested and p.step < self.max_steps:
            return self._interrupted(result)
        # final save
        from framepack_cli.engine.train_optim import optimizer_eval

        optimizer_eval(self.choice)
        result.lora = self.save_lora(o.output_name)
        if o.save_state or o.save_state_on_train_end:
            result.states.append(self.save_state(o.output_name))
        if o.sample_every_n_epochs or o.sample_every_n_steps:
            if not (o.sample_every_n_steps and p.step % o.sample_every_n_steps == 0):
                self._sample(result, epoch=p.epoch if o.sample_every_n_epochs else None)
        self._finish(result)
        return result

    def _oom_hint(self) -> str:
        o = self.opts
        tips = []
        if not o.gradient_checkpointing:
            tips.append("--gradient_checkpointing")
        elif not o.gradient_checkpointing_cpu_offload:
            tips.append("--gradient_checkpointing_cpu_offload")
        if self.device.type == "cuda":
            if not o.fp8_base:
                tips.append("--fp8_base --fp8_scaled")
            if not o.blocks_to_swap:
                tips.append("--blocks_to_swap 20 (up to 36)")
        tips.append("a lower dataset resolution or batch_size")
        return ", ".join(tips)

    def _interrupted(self, result: TrainResult) -> TrainResult:
        from framepack_cli.engine.train_files import step_stem

        o, p = self.opts, self.progress
        result.interrupted = True
        stem = step_stem(o.output_name, p.step)
        lora = self.save_lora(stem)
        state = self.save_state(stem) if o.save_state else None
        self._end_trackers()
        if state is not None:
            how = f"resume with the same command and --resume {state}"
        else:
            how = (f"continue from its weights with --network_weights {lora} (add --save_state to be able to "
                   "resume exactly)")
        raise Interrupted(f"Interrupted at step {p.step} of {self.max_steps}; saved {lora}; {how}")

    def _progress(self, step, loss, avg, lrs, epoch, t0, first_step) -> None:
        if not self.main:
            return
        lr = next(iter(lrs.values())) if lrs else 0.0
        fn = getattr(self.sink, "train_step", None)
        info = {"loss": avg, "current": loss, "lr": lr, "epoch": epoch + 1, "epochs": self.epochs}
        if fn is not None:
            fn(step, self.max_steps, info)

    def _end_progress(self) -> None:
        fn = getattr(self.sink, "end_training", None)
        if self.main and fn is not None:
            fn()

    def _end_trackers(self) -> None:
        if self.logging_dir is not None:
            self.acc.end_training()

    def _finish(self, result: TrainResult) -> None:
        self._end_trackers()
        if not self.main:
            return
        trained = result.steps - self.first_step
        rate = (trained / result.seconds) if result.seconds > 0 else 0.0
        where = f" (steps {self.first_step + 1}-{result.steps} of {self.max_steps})" if self.first_step else ""
        loss = f"; last step loss {result.losses[-1]:.4f}" if result.losses else ""
        self.say(f"Trained {trained} steps{where} ({self.epochs} epoch(s)) in {result.seconds:.1f}s "
                 f"({rate:.2f} steps/s){loss}")
        self.say(f"LoRA: {result.lora}")
        if result.states:
            self.say(f"States: {', '.join(str(s) for s in result.states)}")
        if self.logging_dir is not None:
            self.say(f"Logs: {self.logging_dir}")
        if result.samples:
            self.say(f"Samples: {self.output_dir / 'sample'}")
