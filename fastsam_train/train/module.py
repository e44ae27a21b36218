"""LightningModule: ultralytics YOLOv8-seg + its v8 segmentation loss, trained the ultralytics way.

Optimisation mirrors ultralytics' BaseTrainer step for step (manual optimisation): parameter
groups (decay only on conv/linear weights), weight decay scaled by batch x accumulate / nbs,
gradients accumulated to the nominal batch (64), per-batch warmup of lr/momentum, the linear
(or cosine) per-epoch lr factor, gradient-norm clipping at 10, EMA of the weights after every
optimizer step, the loss multiplied by the world size under DDP. The schedule is a pure function
of (epoch, batch), so a resumed run needs only the optimizer, EMA and step counters, which the
checkpoint holds.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from fastsam_train import ultra
from fastsam_train.train.validation import ValidationAccumulator

log = logging.getLogger(__name__)
OUR_HYP_KEYS = ("grad_clip", "ema_decay", "ema_tau")  # read here, not by ultralytics


class FastSAMModule(L.LightningModule):
    """Class-agnostic YOLOv8-seg training.

    Args:
        model: ``arch``, ``scale`` (n/s/m/l/x), ``nc`` (1), ``reg_max`` (26 for FastSAM),
            ``prototypes`` (mask prototypes, 32).
        hyp: ultralytics hyperparameters (lr0, lrf, momentum, ..., augmentations), the rules
            (``loss_rule``, ``optimizer_rule``, ``schedule_rule``, ``augment_rule``: "v8_0_120"
            for FastSAM's trainer, "v8_4" for the installed ultralytics) plus grad_clip,
            ema_decay, ema_tau.
        init_weights: weights to start from (``load_initial_weights``): our ``.ckpt`` or a
            weights-only file (``fastsam convert-weights``), or an ultralytics ``.pt`` such as
            the official FastSAM-x.pt / FastSAM-s.pt (a pickle: needs ``allow_pickle``).
        init_strict: the file's model config (scale, nc, reg_max, prototypes) must equal
            ``model`` (fine-tuning); otherwise only tensors of equal shape are copied.
        on_nonfinite: "stop" raises on a NaN/inf loss naming the batch; "skip" drops that step.
        overlay_samples: validation images rendered with predicted masks each epoch.
        val_nms: validation NMS ``{conf, iou, max_det}`` (conf/train.yaml ``val_nms``).
    """

    def __init__(self, model: DictConfig | dict, hyp: DictConfig | dict,
                 init_weights: str | None = None, allow_pickle: bool = False,
                 on_nonfinite: str = "stop", overlay_samples: int = 4,
                 init_strict: bool = False, *, val_nms: DictConfig | dict):
        super().__init__()
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
        model, hyp = _plain(model), _plain(hyp)
        self.save_hyperparameters({"model": model, "hyp": hyp, "on_nonfinite": on_nonfinite})
        self.extra = {k: hyp[k] for k in OUR_HYP_KEYS}
        self.hyp = ultra.hyperparameters(**{k: v for k, v in hyp.items()
                                            if k not in OUR_HYP_KEYS})
        self.model = ultra.build_model(model["scale"], nc=model["nc"], reg_max=model["reg_max"],
                                       arch=model["arch"], hyp=self.hyp,
                                       prototypes=model.get("prototypes", 32))
        if init_weights:
            report = load_initial_weights(self.model, init_weights, allow_pickle, model,
                                          init_strict)
            log.info("initialised from %s: %d tensors loaded, %d missing, %d mismatched",
                     init_weights, len(report.loaded), len(report.missing),
                     len(report.mismatched))
        self.automatic_optimization = False
        self.on_nonfinite, self.overlay_samples = on_nonfinite, overlay_samples
        self.loss_fn = None
        self.ema = None
        self._ema_state = None
        self.last_opt_step = -1
        self.last_batch_done = -1  # global batch index of the last training_step that ran
        self.nonfinite_skipped = 0
        self._tick = None
        self.val_nms = {k: _plain(val_nms)[k] for k in ("conf", "iou", "max_det")}
        self.val_acc = ValidationAccumulator()

    # ---- setup ---------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # after the move to the final device
        self.loss_fn = ultra.build_loss(self.model, self.hyp.loss_rule)
        self.ema = ultra.ModelEMA(self.model, decay=self.extra["ema_decay"],
                                  tau=self.extra["ema_tau"])
        if self._ema_state is not None:
            self.ema.ema.load_state_dict(self._ema_state["weights"])
            self.ema.updates = self._ema_state["updates"]

    def global_batch(self) -> int:
        return self.trainer.datamodule.batch_size * self.trainer.world_size

    def accumulate(self, ni: int, nw: int) -> int:
        """Batches per optimizer step: ramps 1 -> nbs / batch during warmup, as ultralytics."""
        return ultra.accumulate_steps(ni, nw, self.hyp.nbs, self.global_batch(),
                                      self.hyp.schedule_rule)

    def configure_optimizers(self):
        accumulate = max(round(self.hyp.nbs / self.global_batch()), 1)
        decay = self.hyp.weight_decay * self.global_batch() * accumulate / self.hyp.nbs
        dm = self.trainer.datamodule
        iterations = ultra.optimizer_iterations(dm.train_total, self.global_batch(),
                                                self.trainer.max_epochs, self.hyp.nbs)
        choice = ultra.resolve_optimizer(self.hyp.optimizer, self.hyp.lr0, self.hyp.momentum,
                                         self.hyp.warmup_bias_lr, iterations, nc=1,
                                         rule=self.hyp.optimizer_rule)
        # "auto" may change the bias warmup start; keep one namespace for every batch
        self.warmup_hyp = ultra.hyperparameters(**{**vars(self.hyp),
                                                   "warmup_bias_lr": choice.warmup_bias_lr})
        optimizer = ultra.build_optimizer(self.model, choice.name, choice.lr, choice.momentum,
                                          decay)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        return optimizer

    # ---- training ------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._tick = None
        if self.hyp.schedule_rule == "v8_0_120":  # 8.0.120 drops pending gradients each epoch
            self.optimizers().zero_grad(set_to_none=True)

    def set_lr(self, optimizer, ni: int, nw: int) -> None:
        factor = ultra.lr_factor(self.current_epoch, self.trainer.max_epochs, self.hyp.lrf,
                                 self.hyp.cos_lr)
        if not ultra.apply_warmup(optimizer, ni, nw, factor, self.warmup_hyp):
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        optimizer = self.optimizers()
        nb = self.trainer.num_training_batches
        ni = batch_idx + nb * self.current_epoch
        nw = ultra.warmup_iterations(self.hyp.warmup_epochs, self.trainer.max_epochs, nb,
                                     self.hyp.schedule_rule)
        if ni <= self.last_batch_done:  # Lightning replays the batch a mid-epoch ckpt was saved at
            return None
        self.last_batch_done = ni
        self.set_lr(optimizer.optimizer, ni, nw)
        imgs = batch["img"].to(self.dtype) / 255  # the model's dtype (float32; 64-true: float64)
        loss, items = self.loss_fn(self.model(imgs), batch)
        if not torch.isfinite(loss):
            self._nonfinite(loss, batch, batch_idx)
            return loss.detach()
        self.manual_backward(loss * self.trainer.world_size)
        # as ultralytics: no forced step at epoch end, pending gradients carry over
        if ni - self.last_opt_step >= self.accumulate(ni, nw):
            # clipping happens in on_before_optimizer_step, after the AMP unscale
            optimizer.step()  # GradScaler: skipped when gradients overflow; EMA updates anyway
            optimizer.zero_grad(set_to_none=True)
            self.ema.update(self.model)
            self.last_opt_step = ni
        self._log_train(items, batch, imgs.shape[0], optimizer.optimizer)
        return loss.detach()

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip the gradient norm at ``grad_clip`` (10) on true gradients.

        Lightning's precision plugins call this hook inside ``optimizer.step()``: under AMP
        (``16-mixed``) after ``scaler.unscale_`` and before ``scaler.step`` / ``scaler.update``,
        which is ultralytics 8.0.120's ``optimizer_step`` order (unscale, clip, step, update).
        Clipping before ``optimizer.step()`` would see gradients times the loss scale (65536 at
        start) and shrink every update by that factor. In fp32 the hook runs just before the
        step, so both paths clip the same gradients."""
        self.clip_gradients(optimizer, gradient_clip_val=self.extra["grad_clip"],
                            gradient_clip_algorithm="norm")

    def _nonfinite(self, loss: torch.Tensor, batch: dict, batch_idx: int) -> None:
        where = (f"non-finite loss {loss.item()} at epoch {self.current_epoch} batch {batch_idx}"
                 f" (samples {list(batch.get('im_file', []))})")
        if self.on_nonfinite == "stop":
            raise FloatingPointError(where + "; set on_nonfinite=skip to drop such steps")
        self.nonfinite_skipped += 1
        log.warning("%s: step skipped (%d so far)", where, self.nonfinite_skipped)
        self.optimizers().zero_grad(set_to_none=True)
        self.log("train/nonfinite_skipped", float(self.nonfinite_skipped))

    def _log_train(self, items: dict, batch: dict, batch_size: int, optimizer) -> None:
        now = time.perf_counter()
        logs = {f"train/loss_{k}": v for k, v in items.items()}
        logs["train/loss"] = sum(items.values())
        for i, group in enumerate(optimizer.param_groups):
            logs[f"lr/pg{i}"] = group["lr"]
        if self._tick is not None:
            logs["train/img_per_s"] = batch_size * self.trainer.world_size / (now - self._tick)
        if batch.get("skipped"):
            logs["data/skipped_samples"] = float(max(batch["skipped"]))
        self._tick = now
        self.log_dict(logs, prog_bar=False, batch_size=batch_size)
        self.log("loss", logs["train/loss"], prog_bar=True, logger=False, batch_size=batch_size)

    # ---- validation ----------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.val_acc.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        model = self.ema.ema if self.ema is not None else self.model
        model.eval()
        imgs = batch["img"].to(self.dtype) / 255  # the model's dtype (float32; 64-true: float64)
        with torch.no_grad():
            (raw, proto), train_preds = model(imgs)
            if self.loss_fn is not None:
                _, items = self.loss_fn(train_preds, batch)
                self.log_dict({f"val/loss_{k}": v for k, v in items.items()},
                              batch_size=imgs.shape[0], sync_dist=True)
            preds = ultra.segment_predictions(raw, proto, imgs.shape[2:], **self.val_nms)
        self.val_acc.add_batch(batch, preds, self.hyp.overlap_mask,
                               keep_images=self.overlay_samples)

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_acc.compute()
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, sync_dist=False)
        if self.trainer.is_global_zero and self.overlay_samples:
            self.val_acc.log_overlays(self.loggers, Path(self.trainer.default_root_dir),
                                      self.current_epoch)

    # ---- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None:
            checkpoint["ema"] = {"weights": self.ema.ema.state_dict(),
                                 "updates": self.ema.updates}
        checkpoint["last_opt_step"] = self.last_opt_step
        checkpoint["last_batch_done"] = self.last_batch_done

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._ema_state = checkpoint.get("ema")
        self.last_opt_step = checkpoint.get("last_opt_step", -1)
        self.last_batch_done = checkpoint.get("last_batch_done", -1)

    def export(self, path: Path) -> Path:
        """The EMA weights (the model ultralytics releases) as an ultralytics-format .pt."""
        model = self.ema.ema if self.ema is not None else self.model
        return ultra.export_ultralytics_checkpoint(model, path, names={0: "object"},
                                                   epochs=self.current_epoch + 1)


def load_initial_weights(model: torch.nn.Module, path: str | Path, allow_pickle: bool,
                         expected: dict, strict: bool) -> ultra.ImportReport:
    """Copy the weights of ``path`` (any format ``infer.weights.read_weights`` reads) into
    ``model``, built from the model config ``expected``.

    The file's config (from its metadata, or read off the tensor shapes for ultralytics
    pickles) is checked against ``expected``: another ``arch`` or ``scale`` is always an error;
    another ``nc`` / ``reg_max`` / ``prototypes`` is an error when ``strict`` (fine-tuning:
    every tensor must carry over), else only the tensors of equal shape are copied (e.g.
    COCO-pretrained yolov8x-seg.pt into the 1-class reg_max 26 head). Raises
    ``FileNotFoundError``, ``PickleRequiredError`` or ``ValueError`` naming the file."""
    from fastsam_train.infer.weights import read_weights

    weights = read_weights(path, allow_pickle=allow_pickle)
    ours = ultra.validate_model_config(dict(expected), "experiment model")
    differ = {k: (weights.config.get(k), v) for k, v in ours.items()
              if weights.config.get(k) != v}
    if differ and (strict or {"arch", "scale"} & set(differ)):
        raise ValueError(f"{path}: its model ({weights.config}) is not the experiment's "
                         f"({ours}); differing (file, experiment): {differ}. Pick the model "
                         "config that matches the weights (e.g. model=yolov8x_seg for "
                         "FastSAM-x)" + ("" if not strict else " or set init_strict=false"))
    state = model.state_dict()
    theirs = weights.state_dict
    mismatched = [(k, tuple(v.shape), tuple(state[k].shape)) for k, v in theirs.items()
                  if k in state and v.shape != state[k].shape]
    bad = {k for k, _, _ in mismatched}
    matched = {k: v for k, v in theirs.items() if k in state and k not in bad}
    report = ultra.ImportReport(loaded=sorted(matched), missing=sorted(set(state) - set(theirs)),
                                unexpected=sorted(set(theirs) - set(state)),
                                mismatched=mismatched)
    if strict and (report.missing or report.mismatched or report.unexpected):
        raise ValueError(f"{path}: tensors do not fit the model: missing {report.missing[:5]}, "
                         f"unexpected {report.unexpected[:5]}, mismatched {mismatched[:5]}")
    model.load_state_dict(matched, strict=False)
    return report


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
