"""Self-supervised losses as pure functions on ``keras.ops`` (TF and JAX).

Every function casts its inputs to float32 first and returns a float32
scalar, whatever the mixed-precision policy the projections were computed
under. Masks are applied *after* that cast by subtracting a large finite
float32 value, never as a +-1e9 constant in the compute dtype (float16
overflows at 65504).

Functions:
    - :func:`nt_xent`: SimCLR's normalised-temperature cross-entropy.
    - :func:`negative_cosine`: -cos(p, stopgrad(z)), the SimSiam/BYOL core.
    - :func:`simsiam_loss`, :func:`byol_loss`: the symmetrised forms.
    - :func:`barlow_twins`: cross-correlation towards the identity.
    - :func:`vicreg`: variance-invariance-covariance regularisation.
    - :func:`moco_loss`: MoCo v2's InfoNCE against a queue of negatives (symmetric).
    - :func:`moco_v3_loss`: MoCo v3's InfoNCE against the batch's momentum keys.
    - :func:`dino_loss`: DINO's cross-entropy between centred, sharpened
      teacher and student prototype distributions.
    - :func:`embedding_std`: the collapse monitor (not a loss).

Example:
    >>> import numpy as np
    >>> z1 = np.random.randn(8, 16).astype("float32")
    >>> float(nt_xent(z1, z1 + 0.01, temperature=0.1)) < float(nt_xent(z1, -z1))
    True
"""

from keras import ops

from kerasssl.nandebug import probe  # names loss terms for --debug-nans (a no-op otherwise)

# Subtracted from masked logits (after the float32 cast): exp() of it is 0.
_MASK_OFFSET = 1e9


def _f32(x):
    return ops.cast(x, "float32")


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """x / max(||x||, epsilon) along ``axis``, in float32, with a finite gradient everywhere.

    Computed as ``x * rsqrt(max(||x||^2, epsilon^2))`` (as ``tf.math.l2_normalize``):
    ``x / max(sqrt(||x||^2), epsilon)`` has the same value but a NaN gradient at
    a zero row (0 from the max times sqrt's infinite slope at 0), and one zero
    projection then turns every weight NaN at the next step. ``epsilon^2`` = 1e-24
    is a normal float32 (the cast comes first; float16 would flush it to 0).
    """
    x = _f32(x)
    squared_norm = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared_norm, epsilon * epsilon))


def nt_xent(z1, z2, temperature=0.1, all_z1=None, all_z2=None, offset=0):
    """SimCLR NT-Xent over both views with intra- and cross-view negatives.

    For a batch of N pairs the 2N embeddings are L2-normalised; row i's
    positive is its other view, its negatives are the other 2N-2 embeddings
    (both views). The loss is the mean cross-entropy over all 2N rows.

    Data-parallel training passes the global batch gathered across replicas
    (``kerasssl.distribute.gather_replicas``) as ``all_z1``/``all_z2`` (M rows,
    this replica's rows at ``offset``): the local 2N rows are then scored
    against all 2M embeddings, and the mean of the replicas' losses equals the
    one-device loss on the global batch.

    Args:
        z1: (N, D) projections of view 1 (any float dtype).
        z2: (N, D) projections of view 2.
        temperature: softmax temperature (> 0).
        all_z1, all_z2: optional (M, D) global-batch projections containing
            z1/z2 at rows offset..offset+N; None means z1/z2 are the whole batch.
        offset: row of z1[0] in all_z1 (a scalar, may be a tensor).

    Returns:
        float32 scalar.

    Example:
        >>> loss = nt_xent(z1, z2, temperature=0.2)
    """
    q = probe("nt_xent normalised embeddings", l2_normalize(ops.concatenate([z1, z2], axis=0)))
    n = ops.shape(z1)[0]
    if all_z1 is None:
        keys, m, offset = q, n, 0
    else:
        keys = probe("nt_xent normalised keys", l2_normalize(ops.concatenate([all_z1, all_z2], axis=0)))
        m = ops.shape(all_z1)[0]
    logits = probe("nt_xent logits", ops.matmul(q, ops.transpose(keys)) / temperature)
    # Row r is view (r // N), sample (r % N); its own column in `keys` is
    # view * M + offset + sample and its positive the same sample in the
    # other view.
    rows = ops.arange(2 * n)
    view = rows // n
    sample = rows % n
    self_index = view * m + offset + sample
    positive_index = (1 - view) * m + offset + sample
    # Remove self-similarity from the softmax (finite offset, float32).
    logits = logits - _MASK_OFFSET * ops.one_hot(self_index, 2 * m, dtype="float32")
    positives = probe("nt_xent positive logits", ops.take_along_axis(
        logits, ops.expand_dims(positive_index, 1), axis=1
    )[:, 0])
    return ops.mean(probe("nt_xent logsumexp", ops.logsumexp(logits, axis=1)) - positives)


def negative_cosine(p, z):
    """Mean of -cos(p_i, z_i) with no gradient through ``z``.

    Args:
        p: (N, D) predictions.
        z: (N, D) targets (gradient stopped).

    Returns:
        float32 scalar in [-1, 1].

    Example:
        >>> negative_cosine(p1, z2)
    """
    p = probe("normalised predictions", l2_normalize(p))
    z = probe("normalised targets", l2_normalize(ops.stop_gradient(z)))
    return -ops.mean(probe("cosine similarities", ops.sum(p * z, axis=-1)))


def simsiam_loss(p1, p2, z1, z2):
    """SimSiam: 0.5 * (D(p1, sg(z2)) + D(p2, sg(z1))) with D = negative cosine.

    Args:
        p1, p2: predictor outputs for views 1 and 2.
        z1, z2: projector outputs for views 1 and 2.

    Example:
        >>> simsiam_loss(p1, p2, z1, z2)  # -1 at perfect alignment
    """
    return 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))


def byol_loss(p1, p2, t1, t2):
    """BYOL: mean over both directions of ||p_hat - t_hat||^2 = 2 - 2 cos.

    Args:
        p1, p2: online predictions of views 1 and 2.
        t1, t2: target-network projections of views 1 and 2 (no gradient).

    Example:
        >>> byol_loss(p1, p2, t1, t2)  # 0 at perfect alignment, <= 4
    """
    return 0.5 * ((2.0 + 2.0 * negative_cosine(p1, t2)) + (2.0 + 2.0 * negative_cosine(p2, t1)))


def _standardize_columns(z, epsilon):
    mean = ops.mean(z, axis=0, keepdims=True)
    std = ops.sqrt(ops.var(z, axis=0, keepdims=True) + epsilon)
    return (z - mean) / std


def barlow_twins(z1, z2, lambda_offdiag=5e-3, epsilon=1e-5):
    """Barlow Twins: push the views' cross-correlation matrix to the identity.

    Each dimension is standardised over the batch; C = z1n^T z2n / N;
    loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2.

    Args:
        z1, z2: (N, D) projections.
        lambda_offdiag: weight of the redundancy-reduction (off-diagonal) term.
        epsilon: added to the variance before the square root.

    Example:
        >>> barlow_twins(z1, z2, lambda_offdiag=5e-3)
    """
    z1 = _standardize_columns(_f32(z1), epsilon)
    z2 = _standardize_columns(_f32(z2), epsilon)
    n = ops.cast(ops.shape(z1)[0], "float32")
    c = probe("barlow_twins cross-correlation", ops.matmul(ops.transpose(z1), z2) / n)
    d = ops.shape(c)[0]
    eye = ops.eye(d, dtype="float32")
    on_diag = ops.sum(ops.square(ops.diagonal(c) - 1.0))
    off_diag = ops.sum(ops.square(c * (1.0 - eye)))
    return on_diag + lambda_offdiag * off_diag


def _off_diagonal_cov_penalty(z):
    n = ops.cast(ops.shape(z)[0], "float32")
    d = ops.shape(z)[1]
    zc = z - ops.mean(z, axis=0, keepdims=True)
    cov = ops.matmul(ops.transpose(zc), zc) / (n - 1.0)
    off = cov * (1.0 - ops.eye(d, dtype="float32"))
    return ops.sum(ops.square(off)) / ops.cast(d, "float32")


def vicreg(z1, z2, sim_weight=25.0, var_weight=25.0, cov_weight=1.0, epsilon=1e-4):
    """VICReg: invariance (MSE) + variance hinge + covariance decorrelation.

    loss = sim_weight * mean((z1 - z2)^2)
         + var_weight * (mean(relu(1 - std(z1))) + mean(relu(1 - std(z2)))) / 2
         + cov_weight * (offdiag(cov(z1))^2.sum() + offdiag(cov(z2))^2.sum()) / D
    with std = sqrt(var + epsilon) per dimension over the batch (unbiased var).

    Args:
        z1, z2: (N, D) projections (N >= 2).
        sim_weight, var_weight, cov_weight: the three coefficients.
        epsilon: numerical floor inside the standard deviation.

    Example:
        >>> vicreg(z1, z2, sim_weight=25.0, var_weight=25.0, cov_weight=1.0)
    """
    z1 = _f32(z1)
    z2 = _f32(z2)
    n = ops.cast(ops.shape(z1)[0], "float32")
    invariance = ops.mean(ops.square(z1 - z2))

    def std_term(z):
        unbiased_var = ops.var(z, axis=0) * n / (n - 1.0)
        return ops.mean(ops.relu(1.0 - ops.sqrt(unbiased_var + epsilon)))

    probe("vicreg invariance", invariance)
    variance = probe("vicreg variance", 0.5 * (std_term(z1) + std_term(z2)))
    covariance = probe("vicreg covariance", _off_diagonal_cov_penalty(z1) + _off_diagonal_cov_penalty(z2))
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance


def _infonce_queue(q, k, queue, temperature):
    """One direction of MoCo v2: query i's positive is key i, its negatives the queue."""
    q = l2_normalize(q)
    k = l2_normalize(ops.stop_gradient(k))
    negatives = l2_normalize(ops.stop_gradient(queue))
    positive = ops.sum(q * k, axis=-1, keepdims=True) / temperature
    negative = ops.matmul(q, ops.transpose(negatives)) / temperature
    logits = probe("moco logits", ops.concatenate([positive, negative], axis=1))
    return ops.mean(ops.logsumexp(logits, axis=1) - positive[:, 0])


def moco_loss(q1, q2, k1, k2, queue, temperature=0.2):
    """MoCo v2 InfoNCE, symmetrised over the two views.

    Query ``q1[i]`` (online network, view 1) is scored against its positive
    key ``k2[i]`` (momentum network, view 2) and the K negatives in
    ``queue``; cross-entropy with the positive as the target class, and the
    same with the views swapped. The loss is the mean of the two directions.
    Everything is L2-normalised here; keys and queue get no gradient.

    Args:
        q1, q2: (N, D) online projections of views 1 and 2 (any float dtype).
        k1, k2: (N, D) momentum-network projections of views 1 and 2.
        queue: (K, D) negative keys (the queue *before* this batch is enqueued).
        temperature: softmax temperature (> 0; 0.2 in MoCo v2).

    Returns:
        float32 scalar.

    Example:
        >>> loss = moco_loss(q1, q2, k1, k2, queue, temperature=0.2)
    """
    return 0.5 * (_infonce_queue(q1, k2, queue, temperature) + _infonce_queue(q2, k1, queue, temperature))


def _infonce_batch(q, k, all_k, offset, temperature):
    q = l2_normalize(q)
    keys = l2_normalize(ops.stop_gradient(k if all_k is None else all_k))
    logits = ops.matmul(q, ops.transpose(keys)) / temperature
    target = offset + ops.arange(ops.shape(q)[0], dtype="int32")
    positive = ops.take_along_axis(logits, ops.expand_dims(target, 1), axis=1)[:, 0]
    return ops.mean(ops.logsumexp(logits, axis=1) - positive)


def moco_v3_loss(q1, q2, k1, k2, temperature=0.2, all_k1=None, all_k2=None, offset=0):
    """MoCo v3 InfoNCE: negatives are the other keys of the (global) batch.

    ``ctr(q, k) = 2 T * CE(q k^T / T, i -> i)`` with L2-normalised rows: query
    ``i``'s positive is key ``i`` of the other view, its negatives the other
    keys of that view. The loss is ``ctr(q1, k2) + ctr(q2, k1)``; the ``2 T``
    factor (as in the paper's code) makes the gradient scale independent of
    the temperature. Keys get no gradient.

    Data-parallel training passes the keys gathered over the replicas
    (``kerasssl.distribute.gather_replicas``) as ``all_k1``/``all_k2`` with this
    replica's rows at ``offset``, so negatives come from the whole global batch.

    Args:
        q1, q2: (N, D) online predictions of views 1 and 2.
        k1, k2: (N, D) momentum-network projections of views 1 and 2.
        temperature: softmax temperature (> 0).
        all_k1, all_k2: optional (M, D) global-batch keys containing k1/k2 at
            rows offset..offset+N; None means k1/k2 are the whole batch.
        offset: row of k1[0] in all_k1 (a scalar, may be a tensor).

    Returns:
        float32 scalar.

    Example:
        >>> loss = moco_v3_loss(p1, p2, k1, k2, temperature=0.2)
    """
    scale = 2.0 * temperature
    return scale * (_infonce_batch(q1, k2, all_k2, offset, temperature)
                    + _infonce_batch(q2, k1, all_k1, offset, temperature))


def dino_loss(student, teacher, center, student_temperature=0.1, teacher_temperature=0.04):
    """DINO: cross-entropy from the centred, sharpened teacher to the student.

    ``P_t = softmax((t - center) / teacher_temperature)`` (no gradient) and
    ``log P_s = log_softmax(s / student_temperature)``; each teacher view ``i``
    is paired with every student view ``j != i`` (the student's first views
    are the same global crops the teacher saw, in the same order; any further
    student views are local crops). The loss is the mean over those pairs of
    the batch mean of ``-sum_k P_t log P_s``.

    Args:
        student: list of (N, K) student logits, one per view (>= 2 views).
        teacher: list of (N, K) teacher logits for the first global views.
        center: (K,) or (1, K) running mean of the teacher logits.
        student_temperature: student softmax temperature (0.1 in DINO).
        teacher_temperature: teacher softmax temperature (0.04-0.07; lower
            is sharper). A scalar or a scalar tensor.

    Returns:
        float32 scalar.

    Example:
        >>> loss = dino_loss([s1, s2], [t1, t2], center, 0.1, 0.04)
    """
    student = list(student)
    teacher = list(teacher)
    if len(teacher) < 1 or len(student) < 2 or len(teacher) > len(student):
        raise ValueError(f"dino_loss needs >= 2 student views and 1..{len(student)} teacher views, "
                         f"got {len(student)} and {len(teacher)}")
    center = ops.reshape(ops.stop_gradient(_f32(center)), (1, -1))
    teacher_temperature = _f32(teacher_temperature)
    targets = [ops.softmax((ops.stop_gradient(_f32(t)) - center) / teacher_temperature, axis=-1)
               for t in teacher]
    log_probs = [ops.log_softmax(_f32(s) / student_temperature, axis=-1) for s in student]
    total, pairs = 0.0, 0
    for i, target in enumerate(targets):
        for j, log_p in enumerate(log_probs):
            if i == j:
                continue
            total = total + ops.mean(-ops.sum(target * log_p, axis=-1))
            pairs += 1
    return total / float(pairs)


def embedding_std(z):
    """Collapse monitor: mean over dimensions of the batch std of L2-normalised z.

    About 1/sqrt(D) for well-spread embeddings, near 0 when all inputs map to
    the same point (collapse).

    Args:
        z: (N, D) embeddings.

    Example:
        >>> float(embedding_std(np.ones((8, 4))))  # collapsed
        0.0
    """
    z = l2_normalize(ops.stop_gradient(z))
    return ops.mean(ops.std(z, axis=0))
