"""The producer path stays light: `import qlite` and `qlite put` load only the standard library
and boto3 (with the packages boto3 itself needs)."""

import json
import subprocess
import sys

import qlite

BOTO3_AND_ITS_DEPENDENCIES = {"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3",
                              "six", "certifi", "qlite", "_distutils_hack"}

REPORT = """
import json, sys
{body}
third = sorted({{m.split(".")[0] for m in sys.modules if not m.startswith("__")}}
               - set(sys.stdlib_module_names))
print(json.dumps(third))
"""


def third_party_modules(body: str, env: dict | None = None) -> set[str]:
    out = subprocess.run([sys.executable, "-c", REPORT.format(body=body)], capture_output=True,
                         text=True, check=True, env=env)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_qlite_loads_only_the_standard_library():
    assert third_party_modules("import qlite") - {"qlite", "_distutils_hack"} == set()


def test_qlite_put_loads_only_the_standard_library_and_boto3(s3):
    body = (
        "sys.argv = ['qlite', 'put', 'math.add', '[1, 2]']\n"
        "from qlite.__main__ import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
    )
    loaded = third_party_modules(body, env=s3.env)
    assert "boto3" in loaded  # it did really put
    assert loaded <= BOTO3_AND_ITS_DEPENDENCIES, loaded - BOTO3_AND_ITS_DEPENDENCIES


def test_all_names_the_public_api_and_nothing_more():
    assert len(set(qlite.__all__)) == len(qlite.__all__)
    for name in qlite.__all__:
        assert hasattr(qlite, name), name
    public = {n for n in vars(qlite) if not n.startswith("_") and not isinstance(
        getattr(qlite, n), type(qlite))}
    assert public <= set(qlite.__all__), public - set(qlite.__all__)


SUBPACKAGES = ("qlite.worker", "qlite.index", "qlite.ops", "qlite.cli", "qlite.testing",
               "qlite.django")


def test_top_level_modules_never_import_the_subpackages():
    """The top level is what a producer loads; only __main__ dispatches to the CLI."""
    import ast
    from pathlib import Path

    for path in Path(qlite.__file__).parent.glob("*.py"):
        if path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                assert not name.startswith(SUBPACKAGES), f"{path.name} imports {name}"


def test_the_producer_modules_load_none_of_the_worker():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, qlite, qlite.producer, qlite.presign, qlite.app\n"
         "print(' '.join(m for m in sys.modules if m.startswith('qlite.')))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert not [m for m in loaded if m.startswith(SUBPACKAGES)], loaded


def test_only_the_store_speaks_boto3():
    """Store is the boundary: botocore's errors are translated there, and nothing else builds
    a client or reaches into its plumbing (the dev server, a test tool, may)."""
    import ast
    from pathlib import Path

    root = Path(qlite.__file__).parent
    allowed = {root / "store.py", root / "testing" / "devserver.py"}
    private = {"_call", "_translated", "_translate", "_make_client", "_client"}
    for path in sorted(set(root.rglob("*.py")) - allowed):
        where = path.relative_to(root)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                modules += [a.name for a in node.names]
                assert not {m.split(".")[0] for m in modules} & {"boto3", "botocore",
                                                                 "s3transfer"}, where
                assert not {a.name for a in node.names} & private, where
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                    and node.value.attr == "store":
                assert node.attr not in private, f"{where} uses store.{node.attr}"
            if isinstance(node, ast.Attribute) and node.attr == "_envelope":
                assert path.name == "producer.py", f"{where} uses ._envelope"
