"""The matrix ops (`newton_schulz`, `row_rms`, `col_rms`, `is_matrix`) against NumPy transcriptions
on matrices, larger tensors, vectors and scalars, in both interpreters; the muon, muon_adam and
adafactor programs against `baselines`, muon_adam_rms and orthogonal_adam against their formulas
(and orthogonal_adam against `baselines`); their exports, printed formulas, mutations,
fingerprints and learning-rate probes."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from baselines.adafactor import adafactor
from baselines.muon import NS_COEFFS, muon
from baselines.orthogonal_adam import orthogonal_adam
from search.canonical import behaviour_fingerprints, structural_hash
from search.encoding import encode_population
from search.export import export_latex, export_markdown, export_python, export_torch
from search.formula import check_formula, parse_latex, parse_table, run_form
from search.interpreter import encoded_transform, program_transform, run_program, slot_ops
from search.learning_rate import ignores_learning_rate
from search.mutation import MutationConfig, mutate, random_program
from search.ops import MATRIX_OPS, OPS, WHOLE, apply
from search.program import LR, NUM_FIXED, G, Instruction, Program, W
from search.programs_library import get_program

R = NUM_FIXED + 1
# A tall matrix, a wide one (Newton-Schulz on its Gram matrix), a 3-axis kernel, a vector and a
# scalar.
SHAPES = {"tall": (5, 3), "wide": (2, 7), "kernel": (2, 3, 4), "vector": (6,), "scalar": ()}


def tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def as_matrix(x: np.ndarray) -> np.ndarray:
    """The matrix view of the ops: leading axes folded into rows, a vector as one row."""
    return x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1]) if x.ndim else x.reshape(1, 1)


def reference(name: str, x: np.ndarray) -> np.ndarray:
    """The op on one tensor in float64: Jordan's quintic iteration written out, RMS by axis."""
    m = as_matrix(x.astype(np.float64))
    if name == "row_rms":
        out = np.sqrt(np.mean(m * m, axis=1, keepdims=True)) * np.ones_like(m)
    elif name == "col_rms":
        out = np.sqrt(np.mean(m * m, axis=0, keepdims=True)) * np.ones_like(m)
    elif name == "is_matrix":
        out = np.full_like(m, float(x.ndim >= 2))
    elif x.ndim < 2:
        out = m / np.sqrt(np.mean(m * m))
    else:
        a, b, c = NS_COEFFS
        X = m if m.shape[0] <= m.shape[1] else m.T
        X = X / (np.linalg.norm(X) + 1e-7)
        for _ in range(5):
            A = X @ X.T
            X = a * X + (b * A + c * A @ A) @ X
        X = X if m.shape[0] <= m.shape[1] else X.T
        out = X * np.sqrt(max(1.0, m.shape[1] / m.shape[0]))
    return out.reshape(x.shape)


def one_op(name: str) -> Program:
    """`u = lr op(g)`."""
    body = (Instruction(name, R, (G,)), Instruction("mul", R, (LR, R)))
    return Program(body, update=R)


@pytest.mark.parametrize("name", MATRIX_OPS)
def test_ops_match_numpy_on_every_shape(name):
    for key, x in tensors(0).items():
        got = apply(OPS[name], [jnp.asarray(x)], np.float32(0.0))
        assert got.shape == x.shape, (name, key)
        np.testing.assert_allclose(got, reference(name, x), rtol=2e-5, atol=1e-6, err_msg=key)


def test_orthogonalization_orthogonalizes_and_rms_ops_factor_a_rank_one_matrix():
    x = tensors(1)["tall"]
    s = np.linalg.svd(np.asarray(apply(OPS["newton_schulz"], [jnp.asarray(x)], 0.0)))[1]
    assert np.all((s > 0.6) & (s < 1.25)), s  # Jordan's iteration: about 1, not exactly
    u, v = np.array([1.0, 2.0, 3.0]), np.array([4.0, -5.0])
    outer = jnp.asarray(np.outer(u, v), jnp.float32)  # row and column RMS factor it exactly
    rows, cols = (apply(OPS[n], [outer], 0.0) for n in ("row_rms", "col_rms"))
    np.testing.assert_allclose(rows * cols / jnp.sqrt(jnp.mean(outer**2)), jnp.abs(outer), 1e-6)
    assert float(apply(OPS["newton_schulz"], [jnp.float32(-3.0)], 0.0)) == pytest.approx(-1.0)


def test_both_interpreters_apply_the_ops_per_tensor():
    """The encoded population (tensors concatenated in one flat vector) and the op-by-op
    interpreter give each leaf the op of its own shape."""
    programs = [one_op(name) for name in MATRIX_OPS]
    g = {k: jnp.asarray(v) for k, v in tensors(2).items()}
    population = jax.tree.map(jnp.asarray, encode_population(programs, max_len=4))
    ops = slot_ops(population.body_ops)

    def first_update(transform):
        return transform.update(g, transform.init(g), g)[0]

    encoded = jax.jit(jax.vmap(lambda e: first_update(encoded_transform(e, 0.5, ops))))(population)
    for i, (name, program) in enumerate(zip(MATRIX_OPS, programs, strict=True)):
        op_by_op = first_update(program_transform(program, 0.5))
        for key, x in tensors(2).items():
            want = -0.5 * reference(name, x)
            np.testing.assert_allclose(op_by_op[key], want, rtol=2e-5, atol=1e-6, err_msg=key)
            np.testing.assert_allclose(encoded[key][i], op_by_op[key], rtol=1e-6, atol=1e-7)


def run(optimizer: optax.GradientTransformation, params, steps: int = 8):
    """Params after `steps` updates on gradients `sin(3 p + t)` (one jitted scan)."""

    def step(carry, t):
        params, state = carry
        grads = jax.tree.map(lambda p: jnp.sin(3 * p + t), params)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    scan = jax.jit(lambda p, ts: jax.lax.scan(step, (p, optimizer.init(p)), ts)[0][0])
    return scan(params, jnp.arange(steps, dtype=jnp.float32))


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_program_is_baselines_muon_on_matrices(nesterov):
    params = {k: jnp.asarray(v) for k, v in tensors(3).items() if len(SHAPES[k]) >= 2}
    mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)  # noqa: E731
    want = run(muon(0.02, nesterov=nesterov, muon_mask=mask), params)
    got = run(program_transform(get_program("muon", nesterov=nesterov), 0.02), params)
    for key in params:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6, err_msg=key)


def test_muon_adam_program_is_baselines_muon_with_adam_for_vectors():
    params = {k: jnp.asarray(v) for k, v in tensors(3).items()}
    mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)  # noqa: E731
    want = run(muon(0.02, adam_b1=0.95, muon_mask=mask), params)
    got = run(program_transform(get_program("muon_adam"), 0.02), params)
    plain_muon = run(program_transform(get_program("muon"), 0.02), params)
    for key in params:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6, err_msg=key)
        assert np.array_equal(got[key], plain_muon[key]) == (len(SHAPES[key]) >= 2), key


def rms_matched_reference(
    name: str,
    params: dict[str, np.ndarray],
    lr: float,
    steps: int = 8,
    kappa: float = 0.0,
    omega: float = 1.0,
):
    """`muon_adam_rms` / `orthogonal_adam` written out in float64 on the gradients of `run`: Adam
    on vectors; on matrices `0.2 O / rms(O)`, `O` the orthogonalized Nesterov momentum (muon) or
    Adam direction (orthogonal); with `kappa`, each tensor's step times `exp(h)`, `h` the sum of
    `kappa cos(g, previous step)`, and with `omega` a matrix's step `omega` times that plus `1 -
    omega` times Adam's (`orthogonal_adam_hd`)."""
    b1, b2, eps = (0.95 if name == "muon_adam_rms" else 0.9), 0.999, 1e-8
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    h = {k: 0.0 for k in p}
    last = {k: np.zeros_like(x) for k, x in p.items()}
    for t in range(steps):
        for k in p:
            g = np.sin(3 * p[k] + t)
            if t:
                cosine = np.sum(g * last[k]) / np.sqrt(np.sum(g * g) * np.sum(last[k] ** 2))
                h[k] += kappa * cosine
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            d = m[k] / (1 - b1 ** (t + 1)) / (np.sqrt(v[k] / (1 - b2 ** (t + 1))) + eps)
            if p[k].ndim >= 2:
                source = b1 * m[k] + (1 - b1) * g if name == "muon_adam_rms" else d
                o = reference("newton_schulz", source)
                d = omega * 0.2 * o / np.sqrt(np.mean(o * o)) + (1 - omega) * d
            last[k] = d
            p[k] = p[k] - lr * np.exp(h[k]) * d
    return p


@pytest.mark.parametrize("name", ["muon_adam_rms", "orthogonal_adam"])
def test_rms_matched_programs_match_their_formulas(name):
    params = tensors(7)
    got = run(program_transform(get_program(name), 0.01), jax.tree.map(jnp.asarray, params))
    want = rms_matched_reference(name, params, 0.01)
    one_step = run(program_transform(get_program(name), 0.01), params, steps=1)
    for key, x in params.items():
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
        if x.ndim >= 2:  # every matrix moves by 0.2 lr in RMS, whatever its shape
            rms = np.sqrt(np.mean(np.square(np.asarray(one_step[key]) - x)))
            assert rms == pytest.approx(0.2 * 0.01, rel=1e-4), key


@pytest.mark.parametrize("kappa, omega", [(0.0, 1.0), (0.3, 1.0), (0.3, 0.5)])
def test_orthogonal_adam_hd_matches_its_formula(kappa, omega):
    """The hypergradient step sizes and the blend of orthogonalized and Adam steps against the
    float64 formula; at `kappa = 0` the program is `orthogonal_adam` to rounding, otherwise its
    steps differ from it."""
    params = tensors(9)
    program = get_program("orthogonal_adam_hd", kappa=kappa, omega=omega)
    got = run(program_transform(program, 0.01), jax.tree.map(jnp.asarray, params), steps=12)
    want = rms_matched_reference("orthogonal_adam", params, 0.01, 12, kappa, omega)
    plain = run(program_transform(get_program("orthogonal_adam"), 0.01), params, steps=12)
    for key in params:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
        apart = np.max(np.abs(np.asarray(got[key]) - np.asarray(plain[key])))
        assert (apart < 1e-6) == (kappa == 0.0), (key, apart)


def test_orthogonal_adam_program_is_baselines_orthogonal_adam():
    params = {k: jnp.asarray(v) for k, v in tensors(8).items()}
    want = run(orthogonal_adam(0.01), params)
    got = run(program_transform(get_program("orthogonal_adam"), 0.01), params)
    for key in params:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6, err_msg=key)


def test_adafactor_program_is_baselines_adafactor():
    params = {k: jnp.asarray(v) for k, v in tensors(4).items() if k != "kernel"}
    want = run(adafactor(1e-2), params)  # factors the last two axes: a kernel would differ
    got = run(program_transform(get_program("adafactor"), 1e-2), params)
    for key in params:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6, err_msg=key)


def load(source: str, path, name: str):
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"matrix_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name",
    ["muon", "muon_adam", "muon_adam_rms", "orthogonal_adam", "orthogonal_adam_hd", "adafactor"],
)
def test_python_export_matches_the_interpreter_on_every_shape(tmp_path, name):
    params = {k: jnp.asarray(v) for k, v in tensors(5).items()}
    program = get_program(name)
    module = load(export_python(program, name=name), tmp_path / f"{name}.py", name)
    got, want = (
        run(getattr(module, name)(0.01), params),
        run(program_transform(program, 0.01), params),
    )
    for key in params:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_torch_export_matches_the_interpreter_on_every_shape(tmp_path):
    torch = pytest.importorskip("torch")
    params = {k: jnp.asarray(v) for k, v in tensors(6).items()}
    programs = {name: one_op(name) for name in MATRIX_OPS}
    programs["muon"] = get_program("muon")
    programs["muon_adam"] = get_program("muon_adam")
    for name, program in programs.items():
        cls = load(export_torch(program, name="Rule"), tmp_path / f"{name}.py", name).Rule
        weights = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in params.items()}
        optimizer = cls(weights.values(), lr=0.01)
        for t in range(4):
            for w in weights.values():
                w.grad = torch.sin(3 * w.detach() + t)
            optimizer.step()
        want = run(program_transform(program, 0.01), params, steps=4)
        for key, w in weights.items():
            np.testing.assert_allclose(
                w.detach().numpy(), want[key], rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}"
            )


def test_printed_formulas_read_back_on_every_shape():
    """LaTeX and table of each op, run as written, on each shape; the 10,000-step check of the
    library's muon and adafactor runs in test_formula."""
    x, g = tensors(7), tensors(8)
    for name in MATRIX_OPS:
        program = one_op(name)
        latex = export_latex(program)
        assert {
            "newton_schulz": r"\operatorname{orth}(g)",
            "row_rms": r"\text{row}",
            "col_rms": r"\text{col}",
            "is_matrix": r"\operatorname{mat}(g)",
        }[name] in latex
        assert r"\operatorname{orth}" in export_markdown(program).split("$$")[0]
        for form in (parse_latex(latex), parse_table(export_markdown(program))):
            for key in SHAPES:
                w, grad = jnp.asarray(x[key]), jnp.asarray(g[key])
                want, _ = run_program(program, w, grad, np.float32(0.1), np.float32(1.0), ())
                got, _ = run_form(form, w, grad, np.float32(0.1), np.float32(1.0), {})
                np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"{name} {key}")
    assert check_formula(get_program("muon"), steps=50).ok
    assert check_formula(get_program("muon_adam"), steps=50).ok


def test_mutation_inserts_matrix_ops_only_when_configured_on():
    assert not set(MATRIX_OPS) & set(MutationConfig().ops)  # off by default
    rng = np.random.default_rng(0)
    used = {True: set(), False: set()}
    for matrix_ops in (True, False):
        config = MutationConfig(max_instructions=12, max_state=1, matrix_ops=matrix_ops)
        assert set(MATRIX_OPS) <= set(config.ops) or not matrix_ops
        for start in (get_program("lion"), get_program("muon"), random_program(rng, config)):
            program = start
            for _ in range(200):
                program = mutate(rng, program, config).program
                assert Program.from_json(program.to_json()) == program
                used[matrix_ops] |= {inst.op for inst in program.instructions}
    assert set(MATRIX_OPS) <= used[True]
    assert used[False] & set(MATRIX_OPS) == {"newton_schulz"}  # only the muon start's own
    with pytest.raises(ValueError, match="matrix_ops"):
        MutationConfig(matrix_ops="no")
    with pytest.raises(ValueError, match="scalar"):  # typed: a tensor operand only
        Program((Instruction("row_rms", R, (LR,)),), update=R)


def test_hashes_and_fingerprints_see_the_matrix_ops():
    ns, normalize = one_op("newton_schulz"), one_op("normalize")
    renamed = Program((Instruction("newton_schulz", R + 3, (G,)),
                       Instruction("mul", R, (R + 3, LR))), update=R)  # fmt: skip
    assert structural_hash(ns) == structural_hash(renamed) != structural_hash(normalize)
    rows, cols = one_op("row_rms"), one_op("col_rms")
    prints = behaviour_fingerprints([ns, renamed, normalize, rows, cols])
    assert prints[0] == prints[1] and len(set(prints)) == 4  # the probe's matrix tells them apart


def test_learning_rate_probe_sees_through_the_matrix_ops():
    """`lr g / rms_row(lr g)` ignores lr; `orth(lr g)` does not quite (its epsilon acts on
    steps below 1e-7), nor do muon and an update made of the weights' column RMS."""
    row_normalized = Program((Instruction("mul", R, (LR, G)), Instruction("row_rms", R + 1, (R,)),
                              Instruction("div", R, (R, R + 1))), update=R)  # fmt: skip
    orth_inside = Program((Instruction("mul", R, (LR, G)),
                           Instruction("newton_schulz", R, (R,))), update=R)  # fmt: skip
    weight_rms = Program((Instruction("col_rms", R, (W,)), Instruction("mul", R, (LR, R))),
                         update=R)  # fmt: skip
    programs = [row_normalized, orth_inside, weight_rms, get_program("muon")]
    assert ignores_learning_rate(programs) == [True, False, False, False]


def test_op_ids_of_the_matrix_ops_follow_the_old_table():
    assert [OPS[name].id for name in MATRIX_OPS] == [46, 47, 48, 49]
    assert all(OPS[name].reduces for name in MATRIX_OPS)
    assert WHOLE.per_tensor(jnp.negative, jnp.ones(2)).tolist() == [-1.0, -1.0]
