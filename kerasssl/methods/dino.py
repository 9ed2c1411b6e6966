"""DINO: self-distillation from an EMA teacher with centring and sharpening."""

import keras
from keras import ops

from kerasssl import distribute, losses
from kerasssl.heads import DINOHead
from kerasssl.layers.crop import RandomResizedCrop
from kerasssl.layers.views import ASYMMETRIC
from kerasssl.methods.base import SSLMethod, register_method
from kerasssl.methods.momentum import MomentumMixin, momentum_copy, use_batch_statistics


@register_method("dino")
@keras.saving.register_keras_serializable(package="kerasssl")
class DINO(MomentumMixin, SSLMethod):
    """DINO (Caron et al. 2021): a student matches an EMA teacher's prototype distribution.

    Student and teacher are the encoder + :class:`~kerasssl.heads.DINOHead`
    (MLP -> L2-normalised bottleneck -> weight-normalised prototypes); the
    teacher is the EMA of the student (see :mod:`kerasssl.methods.momentum`)
    and gets no gradient; its BatchNorm layers use batch statistics when
    training, as DINO's teacher does (see
    :func:`kerasssl.methods.momentum.use_batch_statistics`). The teacher's logits are *centred* (minus ``center``,
    a non-trainable float32 variable holding an EMA, momentum
    ``center_momentum``, of the teacher's batch means over the global batch)
    and *sharpened* (``teacher_temperature``, optionally warmed up linearly
    from ``warmup_teacher_temperature`` over the first
    ``warmup_teacher_fraction`` of ``total_steps``); the student uses
    ``student_temperature``. Loss: :func:`kerasssl.losses.dino_loss`, teacher
    of each global view against the student of every other view, in float32.
    A training call reads the centre and the temperature into its outputs
    before it updates the centre and the step count, so the loss uses the
    values from before the step (on TF and JAX alike).

    Multi-crop (``local_crops > 0``): that many extra views per image, each a
    random resized crop of area ``local_crop_scale`` followed by view 2's
    augmentation, seen by the student only. The encoder has a fixed input
    size, so local crops are resampled to the full size (a zoom, unlike
    DINO's low-resolution crops, and with the full cost per crop); zoom
    changes a lens's apparent Einstein radius, so it is off by default.

    Args:
        encoder, preprocess, view1, view2: see :class:`SSLMethod`.
        output_dim: number of prototypes (65536 in DINO; 4096 suits small data).
        student_temperature: student softmax temperature (0.1).
        teacher_temperature: teacher softmax temperature after warm-up (0.04-0.07).
        warmup_teacher_temperature: starting teacher temperature; None: no warm-up.
        warmup_teacher_fraction: fraction of ``total_steps`` the warm-up lasts.
        center_momentum: EMA momentum of the centre (0.9).
        base_momentum: teacher EMA momentum at step 0, rising to 1 along a half
            cosine (0.996 in DINO; 0.99 suits short runs).
        total_steps: optimizer steps of the whole run (set by ``kerasssl.pretrain``).
        local_crops: extra local views per image (0: two global views only).
        local_crop_scale: (low, high) area fraction of a local crop.
        use_batch_norm: BatchNorm in the head's MLP (on by default: with the
            CNN backbones here, the head without it collapses to a uniform
            teacher on small data, loss -> log(output_dim)).
        norm_last_layer: fix the prototypes' weight-norm gain at 1.
        projection_dim: the head's bottleneck size (256 in DINO).
        hidden_dim, projection_layers: the head's MLP width and number of Dense layers.

    Example:
        >>> model = DINO(encoder, preprocess, v1, v2, output_dim=4096, teacher_temperature=0.04)
    """

    default_views = ASYMMETRIC  # always blur view 1, rarely view 2
    momentum_heads = ("head",)  # the teacher: target_encoder + target_head

    def __init__(self, encoder, preprocess=None, view1=None, view2=None, output_dim=4096,
                 student_temperature=0.1, teacher_temperature=0.04, warmup_teacher_temperature=None,
                 warmup_teacher_fraction=0.3, center_momentum=0.9, base_momentum=0.99, total_steps=1000,
                 local_crops=0, local_crop_scale=(0.25, 0.5), use_batch_norm=True, norm_last_layer=True,
                 projection_dim=256, hidden_dim=512, projection_layers=3, **kwargs):
        for name, value in (("student_temperature", student_temperature),
                            ("teacher_temperature", teacher_temperature)):
            if not float(value) > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if warmup_teacher_temperature is not None and not float(warmup_teacher_temperature) > 0:
            raise ValueError(f"warmup_teacher_temperature must be > 0 or None, got {warmup_teacher_temperature!r}")
        if not 0.0 <= float(center_momentum) < 1.0:
            raise ValueError(f"center_momentum must be in [0, 1), got {center_momentum!r}")
        if int(local_crops) < 0:
            raise ValueError(f"local_crops must be >= 0, got {local_crops!r}")
        self.output_dim = int(output_dim)
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.warmup_teacher_temperature = (None if warmup_teacher_temperature is None
                                           else float(warmup_teacher_temperature))
        self.warmup_teacher_fraction = float(warmup_teacher_fraction)
        self.center_momentum = float(center_momentum)
        self.base_momentum = float(base_momentum)
        self.total_steps = int(total_steps)
        self.local_crops = int(local_crops)
        self.local_crop_scale = tuple(float(s) for s in local_crop_scale)
        self.use_batch_norm = bool(use_batch_norm)
        self.norm_last_layer = bool(norm_last_layer)
        super().__init__(encoder, preprocess, view1, view2, projection_dim=projection_dim,
                         hidden_dim=hidden_dim, projection_layers=projection_layers, **kwargs)

    def build_heads(self):
        self.head = DINOHead(self.hidden_dim, self.projection_dim, self.output_dim, self.projection_layers,
                             use_batch_norm=self.use_batch_norm, norm_last_layer=self.norm_last_layer,
                             name="dino_head")
        self.head.build((None, self.feature_dim))
        self.target_encoder = momentum_copy(self.encoder)
        self.target_head = momentum_copy(self.head, "target_dino_head", (None, self.feature_dim))
        use_batch_statistics(self.target_encoder)
        use_batch_statistics(self.target_head)
        self.init_momentum()
        self.center = self.add_weight(shape=(self.output_dim,), initializer="zeros", dtype="float32",
                                      trainable=False, autocast=False, name="center")
        self.local_crop = (RandomResizedCrop(scale=self.local_crop_scale, ratio=(0.8, 1.25), name="local_crop")
                           if self.local_crops else None)

    def teacher_temperature_at(self, step):
        """The teacher temperature at optimizer step ``step`` (float32 tensor)."""
        final = ops.convert_to_tensor(self.teacher_temperature, "float32")
        warm_steps = int(round(self.warmup_teacher_fraction * self.total_steps))
        if self.warmup_teacher_temperature is None or warm_steps < 1:
            return final
        progress = ops.clip(ops.cast(step, "float32") / float(warm_steps), 0.0, 1.0)
        return self.warmup_teacher_temperature + (final - self.warmup_teacher_temperature) * progress

    def call(self, x, training=False):
        x = self.preprocess(x)
        views = [self.view1(x, training=training), self.view2(x, training=training)]
        if training and self.local_crop is not None:
            views += [self.view2(self.local_crop(x, training=True), training=True) for _ in range(self.local_crops)]
        return self.project_views(views, training)

    def project(self, v1, v2, training):
        return self.project_views([v1, v2], training)

    def project_views(self, views, training):
        """Global views first (the teacher sees those two), then any local views."""
        # Read before the EMA step below increments the step count.
        temperature = self.teacher_temperature_at(ops.copy(self.ema_step))
        if training:
            views = [self._ema(views[0])] + list(views[1:])
        n = ops.shape(views[0])[0]
        embedding = self.head.embed(self.encoder(ops.concatenate(views, axis=0), training=training),
                                    training=training)
        student = self.head.score(embedding)
        teacher = self.target_head(self.target_encoder(ops.concatenate(views[:2], axis=0), training=training),
                                   training=training)
        teacher = ops.stop_gradient(teacher)
        out = {"z1": embedding[:n], "t1": teacher[:n], "t2": teacher[n:],
               # A copy taken before the centre update below (see MoCo's queue).
               "center": ops.copy(self.center), "teacher_temperature": temperature}
        for i in range(len(views)):
            out[f"s{i + 1}"] = student[i * n:(i + 1) * n]
        if training:
            self._update_center(teacher)
        return out

    def _update_center(self, teacher):
        """center <- m * center + (1 - m) * mean of the global batch's teacher logits."""
        teacher = ops.cast(teacher, "float32")
        total = ops.sum(teacher, axis=0, keepdims=True)
        count = ops.reshape(ops.cast(ops.shape(teacher)[0], "float32"), (1,))
        (all_total, all_count), _ = distribute.gather_replicas(total, count)
        if all_total is not None:
            total, count = ops.sum(all_total, axis=0, keepdims=True), ops.sum(all_count)
        mean = total[0] / ops.sum(count)
        m = self.center_momentum
        self.center.assign(m * self.center.value + (1.0 - m) * mean)

    def method_loss(self, out):
        student = []
        while f"s{len(student) + 1}" in out:
            student.append(out[f"s{len(student) + 1}"])
        return losses.dino_loss(student, [out["t1"], out["t2"]], out["center"],
                                student_temperature=self.student_temperature,
                                teacher_temperature=out["teacher_temperature"])

    def method_options(self):
        return dict(self.momentum_options(), output_dim=self.output_dim,
                    student_temperature=self.student_temperature, teacher_temperature=self.teacher_temperature,
                    warmup_teacher_temperature=self.warmup_teacher_temperature,
                    warmup_teacher_fraction=self.warmup_teacher_fraction, center_momentum=self.center_momentum,
                    local_crops=self.local_crops, local_crop_scale=list(self.local_crop_scale),
                    use_batch_norm=self.use_batch_norm, norm_last_layer=self.norm_last_layer)
