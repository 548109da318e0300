"""The scripts of docs/cluster.md parse, and use only options that exist (probekit's, torchrun's, sbatch's)."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from probekit import load_spec

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "cluster.md"
# values the scripts' variables take inside a job (SLURM and the script set them)
JOB_ENV = {"SLURM_NNODES": "2", "SLURM_JOB_ID": "1234", "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3",
           "SLURM_JOB_NODELIST": "node[01-02]", "MASTER_ADDR": "node01", "MASTER_PORT": "29500", "USER": "me",
           "TMPDIR": "/tmp"}
# sbatch's long options (sbatch(1), Slurm 23.x), the ones a probekit job could use
SBATCH_OPTIONS = {"job-name", "nodes", "ntasks", "ntasks-per-node", "gpus", "gpus-per-node", "gres", "cpus-per-task",
                  "mem", "mem-per-cpu", "mem-per-gpu", "time", "signal", "output", "error", "array", "partition",
                  "account", "qos", "dependency", "exclusive", "requeue", "mail-type", "mail-user", "constraint"}


def _scripts() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S)


def _commands(script: str) -> list[list[str]]:
    """The script's command lines (continuations joined), split as the shell would, variables filled in."""
    text = script.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"\$\(.*?\)", "node01", line)
        for k, v in JOB_ENV.items():
            line = line.replace("${" + k + "}", v).replace("$" + k, v)
        out.append(shlex.split(line))
    return out


def test_the_page_has_the_multi_node_and_job_array_scripts():
    scripts = _scripts()
    assert any("torchrun" in s and "--nnodes" in s for s in scripts)
    assert any("--array" in s and "--shard" in s for s in scripts)
    assert any("probekit aggregate" in s for s in scripts)


@pytest.mark.parametrize("index", range(len(_scripts())))
def test_each_script_parses_and_names_only_existing_options(index, tmp_path):
    import torch.distributed.run as torchrun

    from probekit._cli import build_parser

    script = _scripts()[index]
    (tmp_path / "job.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")]).returncode == 0
    for opt in re.findall(r"^#SBATCH\s+--([a-z-]+)", script, flags=re.M):
        assert opt in SBATCH_OPTIONS, f"#SBATCH --{opt}"
    for words in _commands(script):
        if words[0] == "srun":
            words = words[1:]
        if words[0] == "torchrun":
            i = words.index("-m")
            args = torchrun.get_args_parser().parse_args([*words[1:i], "probekit"])
            assert args.rdzv_backend == "c10d" and args.nnodes == "2"
            words = ["probekit", *words[i + 2:]]
        if words[0] != "probekit":
            continue
        args = build_parser().parse_args(words[1:])  # an unknown option exits (SystemExit): the test fails
        if args.command == "run":
            # the --set keys exist: applied to a shipped example standing in for the user's spec.yaml
            load_spec(ROOT / "examples" / "vit-inversion.yaml", args.overrides)
            if args.shard:
                from probekit._shards import Shard

                assert Shard.parse(args.shard) == Shard(1, 3)


def test_the_environment_variables_named_exist():
    text = PAGE.read_text()
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "probekit").rglob("*.py"))
    for name in set(re.findall(r"\bPROBEKIT_[A-Z_]+\b", text)):
        assert f'"{name}"' in source, name
    assert "PROBEKIT_CACHE_PER_NODE" in text
