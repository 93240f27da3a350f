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
