"""Losses vs straightforward NumPy references on random inputs (float32 and float16)."""

import numpy as np
import pytest
import tensorflow as tf

from kerasssl import losses


def _norm(x):
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ref_nt_xent(z1, z2, t):
    z = _norm(np.concatenate([z1, z2]))
    n2 = len(z)
    sim = z @ z.T / t
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        others = [sim[i, k] for k in range(n2) if k != i]
        total += -sim[i, j] + np.log(np.sum(np.exp(others)))
    return total / n2


def ref_neg_cos(p, z):
    return -np.mean(np.sum(_norm(p) * _norm(z), axis=1))


def ref_barlow(z1, z2, lam, eps=1e-5):
    def st(z):
        z = z.astype(np.float64)
        return (z - z.mean(0)) / np.sqrt(z.var(0) + eps)

    c = st(z1).T @ st(z2) / len(z1)
    on = np.sum((np.diag(c) - 1) ** 2)
    off = np.sum(c**2) - np.sum(np.diag(c) ** 2)
    return on + lam * off


def ref_vicreg(z1, z2, s, v, c, eps=1e-4):
    z1 = z1.astype(np.float64)
    z2 = z2.astype(np.float64)
    inv = np.mean((z1 - z2) ** 2)

    def std_term(z):
        return np.mean(np.maximum(0, 1 - np.sqrt(z.var(0, ddof=1) + eps)))

    def cov_term(z):
        cov = np.cov(z, rowvar=False)
        return (np.sum(cov**2) - np.sum(np.diag(cov) ** 2)) / z.shape[1]

    return s * inv + v * 0.5 * (std_term(z1) + std_term(z2)) + c * (cov_term(z1) + cov_term(z2))


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(12, 16)).astype(np.float32)
    z2 = (z1 + 0.5 * rng.normal(size=z1.shape)).astype(np.float32)
    return z1, z2


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_numpy(pair, temperature):
    z1, z2 = pair
    got = losses.nt_xent(z1, z2, temperature=temperature)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(float(got), ref_nt_xent(z1, z2, temperature), rtol=1e-5)


def test_nt_xent_float16_inputs_do_not_overflow(pair):
    # Large-magnitude float16 projections and a small temperature: the mask
    # must live in float32, or the result is inf/nan.
    z1, z2 = pair
    h1, h2 = (z1 * 300).astype(np.float16), (z2 * 300).astype(np.float16)
    got = float(losses.nt_xent(h1, h2, temperature=0.05))
    ref = ref_nt_xent(h1.astype(np.float32), h2.astype(np.float32), 0.05)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, ref, rtol=1e-3)


def test_nt_xent_prefers_aligned_views(pair):
    z1, z2 = pair
    aligned = float(losses.nt_xent(z1, z1, 0.1))
    shuffled = float(losses.nt_xent(z1, z2[::-1], 0.1))
    assert aligned < shuffled


def test_negative_cosine_and_symmetric_forms(pair):
    z1, z2 = pair
    rng = np.random.default_rng(1)
    p1, p2 = rng.normal(size=z1.shape), rng.normal(size=z1.shape)
    np.testing.assert_allclose(float(losses.negative_cosine(p1, z2)), ref_neg_cos(p1, z2), rtol=1e-5)
    sims = 0.5 * (ref_neg_cos(p1, z2) + ref_neg_cos(p2, z1))
    np.testing.assert_allclose(float(losses.simsiam_loss(p1, p2, z1, z2)), sims, rtol=1e-5)
    # BYOL's ||a_hat - b_hat||^2 == 2 - 2 cos.
    byol = 0.5 * (
        np.mean(np.sum((_norm(p1) - _norm(z2)) ** 2, 1)) + np.mean(np.sum((_norm(p2) - _norm(z1)) ** 2, 1))
    )
    np.testing.assert_allclose(float(losses.byol_loss(p1, p2, z1, z2)), byol, rtol=1e-5)


def test_l2_normalize_matches_numpy_and_keeps_tiny_rows_finite(pair):
    z1, _ = pair
    np.testing.assert_allclose(losses.l2_normalize(z1).numpy(), _norm(z1), rtol=1e-5, atol=1e-6)
    tiny = np.full((1, 4), 1e-20, np.float32)  # below epsilon: divided by epsilon, as before
    np.testing.assert_allclose(losses.l2_normalize(tiny).numpy(), tiny / 1e-12, rtol=1e-5)


def test_negative_cosine_stops_gradient_through_target(pair):
    z1, z2 = pair
    p = tf.Variable(z1)
    z = tf.Variable(z2)
    with tf.GradientTape() as tape:
        loss = losses.negative_cosine(p, z)
    gp, gz = tape.gradient(loss, [p, z])
    assert gz is None or np.all(np.asarray(gz) == 0)
    assert np.abs(np.asarray(gp)).sum() > 0


@pytest.mark.parametrize("lam", [5e-3, 0.1])
def test_barlow_twins_matches_numpy(pair, lam):
    z1, z2 = pair
    np.testing.assert_allclose(float(losses.barlow_twins(z1, z2, lam)), ref_barlow(z1, z2, lam), rtol=1e-4)


def test_vicreg_matches_numpy(pair):
    z1, z2 = pair
    got = float(losses.vicreg(z1, z2, 25.0, 15.0, 2.0))
    np.testing.assert_allclose(got, ref_vicreg(z1, z2, 25.0, 15.0, 2.0), rtol=1e-4)
    # float16 inputs give the same value up to float16 input rounding.
    got16 = float(losses.vicreg(z1.astype(np.float16), z2.astype(np.float16), 25.0, 15.0, 2.0))
    np.testing.assert_allclose(got16, got, rtol=2e-2)


def test_embedding_std_detects_collapse(pair):
    z1, _ = pair
    collapsed = np.tile(z1[:1], (12, 1))
    assert float(losses.embedding_std(collapsed)) < 1e-6
    ref = np.mean(np.std(_norm(z1), axis=0))
    np.testing.assert_allclose(float(losses.embedding_std(z1)), ref, rtol=1e-5)


# -- MoCo and DINO: loop-based NumPy references --------------------------------
def _log_softmax_rows(a):
    a = a - a.max(axis=1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=1, keepdims=True))


def ref_moco_direction(q, k, queue, t):
    q, k, queue = _norm(q), _norm(k), _norm(queue)
    total = 0.0
    for i in range(len(q)):
        scores = np.array([q[i] @ k[i]] + [q[i] @ neg for neg in queue]) / t
        total += -scores[0] + np.log(np.sum(np.exp(scores)))
    return total / len(q)


def ref_moco_v3_direction(q, k, t):
    q, k = _norm(q), _norm(k)
    total = 0.0
    for i in range(len(q)):
        scores = np.array([q[i] @ k[j] for j in range(len(k))]) / t
        total += -scores[i] + np.log(np.sum(np.exp(scores)))
    return 2 * t * total / len(q)


def ref_dino(student, teacher, center, ts, tt):
    total, pairs = 0.0, 0
    for i, t in enumerate(teacher):
        logits = (t.astype(np.float64) - center) / tt
        p_t = np.exp(logits - logits.max(1, keepdims=True))
        p_t /= p_t.sum(1, keepdims=True)
        for j, s in enumerate(student):
            if i != j:
                total += np.mean(-np.sum(p_t * _log_softmax_rows(s.astype(np.float64) / ts), axis=1))
                pairs += 1
    return total / pairs


@pytest.mark.parametrize("temperature", [0.07, 0.2])
def test_moco_loss_matches_numpy(pair, temperature):
    z1, z2 = pair
    rng = np.random.default_rng(2)
    k1, k2 = (z1 + 0.1 * rng.normal(size=z1.shape)), (z2 + 0.1 * rng.normal(size=z2.shape))
    queue = rng.normal(size=(37, z1.shape[1])).astype(np.float32)
    got = losses.moco_loss(z1, z2, k1, k2, queue, temperature=temperature)
    assert got.dtype == tf.float32
    ref = 0.5 * (ref_moco_direction(z1, k2, queue, temperature) + ref_moco_direction(z2, k1, queue, temperature))
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)
    # float16 projections and a small temperature: still finite, same value up to rounding.
    got16 = float(losses.moco_loss(*(a.astype(np.float16) * 50 for a in (z1, z2, k1, k2, queue)), temperature=0.05))
    ref16 = 0.5 * (ref_moco_direction(z1, k2, queue, 0.05) + ref_moco_direction(z2, k1, queue, 0.05))
    assert np.isfinite(got16)
    np.testing.assert_allclose(got16, ref16, rtol=1e-2)


def test_moco_loss_has_no_gradient_through_keys_or_queue(pair):
    z1, z2 = pair
    q1, q2, k1, k2 = (tf.Variable(a) for a in (z1, z2, z2 + 0.1, z1 - 0.1))
    queue = tf.Variable(np.random.default_rng(3).normal(size=(9, z1.shape[1])).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = losses.moco_loss(q1, q2, k1, k2, queue, 0.2)
    grads = tape.gradient(loss, [q1, q2, k1, k2, queue])
    assert all(np.abs(np.asarray(g)).sum() > 0 for g in grads[:2])
    assert all(g is None for g in grads[2:])


def test_moco_v3_loss_matches_numpy_and_global_batch_slices(pair):
    z1, z2 = pair
    rng = np.random.default_rng(4)
    k1, k2 = (z1 + 0.2 * rng.normal(size=z1.shape)), (z2 + 0.2 * rng.normal(size=z2.shape))
    t = 0.2
    ref = ref_moco_v3_direction(z1, k2, t) + ref_moco_v3_direction(z2, k1, t)
    np.testing.assert_allclose(float(losses.moco_v3_loss(z1, z2, k1, k2, t)), ref, rtol=1e-5)
    # The second half of the batch scored against the whole batch's keys (one
    # replica of two): the mean of both halves' losses is the whole-batch loss.
    halves = []
    for start in (0, 6):
        part = slice(start, start + 6)
        halves.append(float(losses.moco_v3_loss(z1[part], z2[part], k1[part], k2[part], t,
                                                all_k1=k1, all_k2=k2, offset=start)))
    np.testing.assert_allclose(np.mean(halves), ref, rtol=1e-5)


@pytest.mark.parametrize("teacher_temperature", [0.04, 0.07])
def test_dino_loss_matches_numpy(teacher_temperature):
    rng = np.random.default_rng(5)
    n, k = 6, 20
    student = [rng.normal(size=(n, k)).astype(np.float32) for _ in range(4)]  # 2 global + 2 local
    teacher = [rng.normal(size=(n, k)).astype(np.float32) for _ in range(2)]
    center = rng.normal(size=(k,)).astype(np.float32) * 0.1
    got = losses.dino_loss(student, teacher, center, 0.1, teacher_temperature)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(float(got), ref_dino(student, teacher, center, 0.1, teacher_temperature), rtol=1e-5)
    # Two views: the two cross pairs only (teacher 1 -> student 2, teacher 2 -> student 1).
    two = float(losses.dino_loss(student[:2], teacher, center[None], 0.1, teacher_temperature))
    np.testing.assert_allclose(two, ref_dino(student[:2], teacher, center, 0.1, teacher_temperature), rtol=1e-5)
    # float16 logits are scored in float32: finite, and the same value up to input rounding.
    got16 = float(losses.dino_loss([s.astype(np.float16) for s in student], [t.astype(np.float16) for t in teacher],
                                   center.astype(np.float16), 0.1, teacher_temperature))
    assert np.isfinite(got16)
    np.testing.assert_allclose(got16, float(got), rtol=1e-2)


def test_dino_loss_gradient_reaches_student_only():
    rng = np.random.default_rng(6)
    s1, s2, t1, t2 = (tf.Variable(rng.normal(size=(4, 8)).astype(np.float32)) for _ in range(4))
    with tf.GradientTape() as tape:
        loss = losses.dino_loss([s1, s2], [t1, t2], np.zeros(8, np.float32))
    grads = tape.gradient(loss, [s1, s2, t1, t2])
    assert all(np.abs(np.asarray(g)).sum() > 0 for g in grads[:2])
    assert all(g is None for g in grads[2:])
    with pytest.raises(ValueError, match="student views"):
        losses.dino_loss([s1], [t1], np.zeros(8, np.float32))
