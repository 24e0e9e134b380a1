"""The source tree never runs code taken from a file: no eval, exec, compile or __import__, no
pickle, marshal or shelve, no unsafe YAML loader, and every `np.load` refuses pickled arrays.
A new use must be justified by adding it to ALLOWED."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("tasks", "baselines", "search", "l2o", "bench")
FORBIDDEN = {
    "eval": r"(?<![\w.])eval\s*\(",
    "exec": r"(?<![\w.])exec\s*\(",
    "compile": r"(?<![\w.])compile\s*\(",
    "__import__": r"__import__",
    "pickle": r"pickle",
    "marshal": r"marshal",
    "shelve": r"shelve",
    "dill": r"\bdill\b|cloudpickle|joblib",
    "yaml.load": r"yaml\.(load|load_all|unsafe_load|full_load|Loader|UnsafeLoader|FullLoader)\b",
    "os.system": r"os\.system|os\.popen",  # a shell command line (subprocess takes argv lists)
}
# (file, name, regex of the allowed line): each a mention or a safe use, never a call on data.
ALLOWED = [
    ("l2o/optimizers/file_format.py", "pickle", r"no pickle|Nothing is unpickled"),
    ("l2o/meta/checkpoint.py", "pickle", r"no pickle|allow_pickle=False"),
    ("l2o/cli/export.py", "pickle", r"allow_pickle=False"),
    ("search/rule_file.py", "eval", r"_CODE = |import\|lambda\|eval\|exec"),
    ("search/rule_file.py", "exec", r"import\|lambda\|eval\|exec"),
    ("search/rule_file.py", "compile", r"import\|lambda\|eval\|exec\|compile"),
]


def source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def _allowed(relative: str, name: str, line: str) -> bool:
    return any(
        f == relative and n == name and re.search(pattern, line) for f, n, pattern in ALLOWED
    )


def test_no_code_execution_primitives_in_the_source_tree():
    found = []
    for path in source_files():
        relative = path.relative_to(REPO).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for name, pattern in FORBIDDEN.items():
                if re.search(pattern, line) and not _allowed(relative, name, line):
                    found.append(f"{relative}:{number}: {name}: {line.strip()}")
    assert not found, "\n".join(found)


def test_every_numpy_load_refuses_pickles():
    loads = []
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "load" and getattr(node.func.value, "id", "") in ("np", "jnp"):
                    safe = any(
                        k.arg == "allow_pickle"
                        and isinstance(k.value, ast.Constant)
                        and k.value.value is False
                        for k in node.keywords
                    )
                    loads.append((path.name, node.lineno, safe))
    assert loads, "expected the checkpoint loader to use np.load"
    assert all(safe for *_, safe in loads), loads


def test_the_scan_catches_what_it_should(tmp_path):
    """The patterns themselves: each forbidden use is found, harmless look-alikes are not."""
    bad = [
        "eval('1')",
        "exec(code)",
        "pickle.loads(b)",
        "yaml.load(text)",
        "marshal.loads(b)",
        "shelve.open(p)",
        "__import__('os')",
        "compile(src, 'f', 'exec')",
        "yaml.load(t, Loader=yaml.Loader)",
        "os.system('x')",
    ]
    harmless = [
        "jax.jit(f).lower(x).compile()",
        "task.evaluate(p)",
        "yaml.safe_load(t)",
        "evaluate_state(x)",
        "model.eval_shape(f)",
        "executor(x)",
        "subprocess.run(argv)",
    ]
    for line in bad:
        assert any(re.search(p, line) for p in FORBIDDEN.values()), line
    for line in harmless:
        assert not any(re.search(p, line) for p in FORBIDDEN.values()), line
