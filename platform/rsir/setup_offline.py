"""Make NLTK's WordNet corpus available offline (METEOR needs it): ``python -m rsir.setup_offline``.

NLTK normally downloads WordNet from the internet. Here it is built from Debian's
``wordnet-base`` + ``wordnet-sense-index`` packages (WordNet 3.0, the version NLTK
ships), installed with apt-get when missing and running as root. NLTK's
``WordNetCorpusReader`` opens ``lexnames``, ``index.*``, ``data.*``, ``*.exc``,
``cntlist.rev`` and ``index.sense`` from ``corpora/wordnet/``; Debian ships all but
``lexnames``, which is written from WordNet 3.0's fixed list (see lexnames(5WN)).

Idempotent and quiet when WordNet already loads. Exit status 1 with a message saying
what to do when it cannot be set up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

APT_PACKAGES = ("wordnet-base", "wordnet-sense-index")
APT_DIR = Path("/usr/share/wordnet")

# WordNet 3.0 lexicographer files, numbered 00..44 (lexnames(5WN)); the syntactic
# category (1 noun, 2 verb, 3 adjective, 4 adverb) follows from the prefix.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance",
    "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion",
    "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

# Files NLTK's reader opens (WordNetCorpusReader._FILES) other than lexnames.
WORDNET_FILES = (
    "cntlist.rev", "index.sense",
    "index.adj", "index.adv", "index.noun", "index.verb",
    "data.adj", "data.adv", "data.noun", "data.verb",
    "adj.exc", "adv.exc", "noun.exc", "verb.exc",
)


def default_data_dir() -> Path:
    """``<venv>/nltk_data`` inside a virtual environment (on NLTK's path), else ``~/nltk_data``."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "nltk_data"
    return Path.home() / "nltk_data"


def wordnet_works() -> bool:
    """True when NLTK finds and can read a WordNet corpus."""
    try:
        from nltk.corpus import wordnet

        return bool(wordnet.synsets("building"))
    except LookupError:
        return False


def lexnames_text() -> str:
    """The ``lexnames`` file: ``NN<TAB>name<TAB>category`` per line."""
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def _apt_install() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"WordNet files are missing from {APT_DIR}. Install them with "
            f"`sudo apt-get install -y {' '.join(APT_PACKAGES)}` and run "
            "`python -m rsir.setup_offline` again."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
        # The package lists may be missing in a fresh container.
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
        subprocess.run(cmd, env=env, capture_output=True, check=True)


def install_wordnet(data_dir: Path, source: Path = APT_DIR) -> Path:
    """Build ``<data_dir>/corpora/wordnet`` from the Debian files; returns that folder."""
    if not all((source / f).is_file() for f in WORDNET_FILES):
        _apt_install()
    target = data_dir / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for name in WORDNET_FILES:
        shutil.copyfile(source / name, target / name)
    (target / "lexnames").write_text(lexnames_text())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="NLTK data folder to write (default: <venv>/nltk_data or ~/nltk_data)")
    args = parser.parse_args(argv)
    if args.data_dir is None and wordnet_works():
        return 0
    data_dir = args.data_dir or default_data_dir()
    try:
        target = install_wordnet(data_dir)
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        print(f"rsir.setup_offline: cannot set up WordNet: {exc}", file=sys.stderr)
        return 1
    import nltk

    if str(data_dir) not in nltk.data.path:
        print(f"rsir.setup_offline: WordNet written to {target}; add {data_dir} to NLTK_DATA "
              "so NLTK finds it", file=sys.stderr)
        return 0
    if not wordnet_works():
        print(f"rsir.setup_offline: WordNet written to {target} but NLTK cannot read it",
              file=sys.stderr)
        return 1
    print(f"rsir.setup_offline: WordNet 3.0 installed for NLTK in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
