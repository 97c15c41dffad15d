"""Every fenced block of README.md is run by a test, or marked as illustration only (see tests/readme.py).

A run that includes this test ends with the list ("README blocks"): each block, and the test that runs it.
"""

from __future__ import annotations

from readme import KINDS, blocks, claimed


def test_every_block_is_marked_run_by_a_test_or_an_illustration_with_a_reason() -> None:
    found = blocks()
    runners = claimed()
    problems = []
    for block in found:
        if block.kind not in KINDS:
            problems.append(
                f"{block}: put <!-- example: NAME -->, <!-- output: NAME --> or <!-- illustration: WHY --> "
                "on the line before it, and a test that runs an example (tests/readme.py says how)"
            )
        elif block.kind != "illustration" and block.name not in runners:
            problems.append(f"{block}: no test claims it with @readme_example({block.name!r})")
        elif block.kind == "illustration" and len(block.name) < 10:
            problems.append(f"{block}: say why it is not run")
    names = [block.name for block in found if block.kind != "illustration"]
    problems += [f"{name!r} marks {names.count(name)} blocks" for name in sorted(set(names)) if names.count(name) > 1]
    problems += [
        f"{test} claims {name!r}, which README.md no longer has" for name, test in runners.items() if name not in names
    ]
    assert not problems, "\n".join(problems)
