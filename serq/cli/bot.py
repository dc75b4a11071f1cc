"""The demo console bot: `serq bot [FILES|DIRS] [--script FILE]`.

Everything the seed's GUI did, in a console, through the real service:
``list``, ``play``, ``spectrum`` (local), ``classify`` (through the broker),
``models``, ``accuracy``, ``train`` (through the trainer), ``help``, ``quit``;
and beyond it ``timeline`` (emotion over a long recording, streamed through the
broker, or computed here when no broker answers) and speaker profiles
(``enroll``, ``classify --speaker``, ``profiles``, ``forget``: kept in memory, or
in the ``--profiles DIR`` the bot is given).

Interactive on a terminal (history and tab completion of file names, via
:mod:`readline`); otherwise it reads one command per line from stdin or the
``--script`` file and echoes each before its output, so a run is a readable
transcript. A command that fails prints ``error [code]: message`` and the bot
carries on; in script mode the exit status is 1 if any command failed. A missing
sound device is a one-line warning, not a failure.
"""

from __future__ import annotations

import argparse
import cmd
import contextlib
import os
import shlex
import shutil
import sys
import textwrap
import time
from collections.abc import Iterable
from pathlib import Path

import soundfile as sf

from serq.cli import build_parser
from serq.cli.commands.models import run_list
from serq.cli.output import answered_by, expand_paths, format_report, format_result, too_few_clips
from serq.cli.playback import PlaybackUnavailable, play
from serq.cli.timeline_view import show_timeline
from serq.client.client import Client
from serq.client.profiles import ProfileStore, SpeakerProfiles
from serq.errors import SerqError
from serq.extras import missing_extra
from serq.files import AUDIO_SUFFIXES
from serq.labels import EMOTIONS
from serq.models.registry import DEFAULT_DIR, Registry, read_metadata
from serq.settings import get_settings

#: The sample clips beside the package in a source checkout (``./run demo``).
SAMPLES_DIR = Path(__file__).resolve().parents[2] / "samples"


class Usage(SerqError):
    code = "usage"


class _Parser(argparse.ArgumentParser):
    """argparse for one bot command: errors raise :class:`Usage` instead of exiting."""

    def error(self, message: str):
        raise Usage(f"{message}\n{self.format_usage().strip()}")

    def exit(self, status: int = 0, message: str | None = None):
        raise Usage(message or self.format_usage().strip())


def expected_label(path: Path) -> str | None:
    """The emotion a file's name declares: ``angry-...`` (samples/) or a corpus name (RAVDESS...)."""
    head = path.stem.split("-", 1)[0].lower()
    if head in EMOTIONS:
        return head
    try:
        from serq.worker.training.datasets import parse_name  # lazy: the worker extra, optional here
    except ImportError:
        return None
    parsed = parse_name(path)
    return parsed[0] if parsed else None


class AgreementTally:
    """How many clips agree with the emotion their file name declares, said of the model that answered.

    Clips of emotions the answering model does not know are not counted (a 4-class model cannot
    say "fearful"), and the line says whether the model is the shipped one, trained on every
    RAVDESS actor: then agreement on RAVDESS clips is no accuracy figure.
    """

    def __init__(self) -> None:
        self.agree = self.counted = self.unknown = 0
        self.versions: set[str] = set()

    def add(self, result: dict, expected: str | None) -> str | None:
        """Count one result; the line to show under it, if its file name declares an emotion."""
        if not expected or not result.get("label"):
            return None
        self.versions.add(result["model_version"])
        if expected not in result.get("probabilities", {}):
            self.unknown += 1
            return f"file says {expected}: an emotion model {result['model_version']} does not know (not counted)"
        self.counted += 1
        self.agree += result["label"] == expected
        return f"file says {expected}: {'agrees' if result['label'] == expected else 'differs'}"

    def summary(self) -> str | None:
        if self.counted + self.unknown <= 1:
            return None
        versions = ", ".join(sorted(self.versions))
        line = f"{self.agree}/{self.counted} agree with the label in the file name (model {versions}"
        if self.unknown:
            line += f"; {self.unknown} clip(s) of emotions it does not know not counted"
        if self.versions == {shipped_version()}:
            why = ("the shipped model was trained on every RAVDESS actor, these clips included; "
                   "`accuracy` gives its figure on speakers it never heard")
        else:
            why = "these clips may be in its training data; `accuracy` gives its figure on speakers it never heard"
        return f"{line}). A demo, not an accuracy figure: {why}"


def shipped_version() -> str | None:
    """The version of the shipped default model (None when its folder cannot be read)."""
    try:
        return read_metadata(DEFAULT_DIR).version
    except SerqError:
        return None


class Bot(cmd.Cmd):
    """The console. ``paths``: the files it knows (``list``, numbers, names); ``stdout``: where it writes."""

    intro_text = "serq demo bot: type help for the commands, quit to leave."

    def __init__(self, paths: Iterable[str | Path] = (), *, stdin=None, stdout=None,
                 interactive: bool | None = None, settings=None, profiles_dir: str | Path | None = None):
        stdin = stdin or sys.stdin
        stdout = stdout or sys.stdout
        super().__init__(stdin=stdin, stdout=stdout)
        self.interactive = stdin.isatty() if interactive is None else interactive
        self.use_rawinput = self.interactive
        self.prompt = "serq> " if self.interactive else ""
        self.settings = settings
        self.files: list[Path] = list(expand_paths(str(p) for p in paths))
        self.failures = 0
        self._client = None
        # Speaker profiles: in memory (gone with the session) unless the user names a directory.
        self.profiles = ProfileStore(profiles_dir)

    # ------------------------------------------------------------------ plumbing

    def out(self, text: str = "") -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def fail(self, exc: BaseException) -> None:
        self.failures += 1
        code = getattr(exc, "code", "internal")
        self.out(f"error [{code}]: {exc}")

    def get_settings(self):
        if self.settings is None:
            self.settings = get_settings()
        return self.settings

    def precmd(self, line: str) -> str:
        if not self.interactive and line.strip() not in {"", "EOF"} and not line.lstrip().startswith("#"):
            self.out(f"serq> {line.rstrip()}")
        return line

    def onecmd(self, line: str) -> bool:
        if line.lstrip().startswith("#"):
            return False  # comments in scripts
        try:
            return super().onecmd(line)
        except KeyboardInterrupt:
            self.out("interrupted")
            self.failures += 1
        except SerqError as exc:
            self.fail(exc)
        except ModuleNotFoundError as exc:
            self.fail(missing_extra(exc, line.split()[0]) or SerqError(f"{exc.__class__.__name__}: {exc}"))
        except Exception as exc:  # a bug must not end the session: report it in one line
            self.fail(SerqError(f"{exc.__class__.__name__}: {exc}"))
        return False

    def emptyline(self) -> bool:
        return False  # cmd's default repeats the last command: surprising for `train`

    def default(self, line: str) -> bool:
        if line.strip() == "EOF":
            return self.do_quit("")
        self.fail(Usage(f"unknown command {line.split()[0]!r}; type help"))
        return False

    def run(self) -> int:
        """The loop; returns the exit status (1 if any command failed in script mode)."""
        history = None
        if self.interactive:
            history = self._readline_setup()
            self.out(self.intro_text)
            if self.files:
                self.out(f"{len(self.files)} files loaded; `list` shows them.")
        while True:
            try:
                self.cmdloop()
                break
            except KeyboardInterrupt:  # Ctrl-C at the prompt: a new prompt, not an exit
                self.out("^C")
                if not self.interactive:
                    self.failures += 1
                    break
        self.close()
        if history:
            with contextlib.suppress(OSError):
                import readline  # lazy: importing it changes input(); interactive only

                readline.write_history_file(history)
        return 1 if self.failures and not self.interactive else 0

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def _readline_setup(self) -> str | None:
        try:
            import readline  # lazy: importing it changes input(); interactive only
        except ImportError:
            return None
        readline.set_completer_delims(" \t\n")  # file names hold '/' and '-'
        state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local/state") / "serq"
        history = state / "bot_history"
        with contextlib.suppress(OSError):
            state.mkdir(parents=True, exist_ok=True)
            readline.read_history_file(history)
        readline.set_history_length(1000)
        return str(history)

    # ------------------------------------------------------------------ files

    def resolve(self, arg: str) -> Path:
        """A file from ``arg``: a number from ``list``, a path, or a unique prefix of a known file name."""
        if arg.isdigit() and 1 <= int(arg) <= len(self.files):
            return self.files[int(arg) - 1]
        path = Path(arg).expanduser()
        if path.exists():
            return path
        matches = [p for p in self.files if p.name == arg or p.stem == arg] or \
                  [p for p in self.files if p.name.startswith(arg)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise Usage(f"{arg!r} matches {len(matches)} files: {', '.join(p.name for p in matches[:5])}")
        raise SerqError(f"no such file: {arg} (see `list`)", code="not_found")

    def resolve_many(self, args: list[str]) -> list[Path]:
        out: list[Path] = []
        for arg in args:
            path = self.resolve(arg)
            out += list(expand_paths([str(path)])) if path.is_dir() else [path]
        return out

    def complete_files(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        """Tab completion: known file names and numbers, then the file system."""
        names = [p.name for p in self.files if p.name.startswith(text)]
        base = Path(text).expanduser()
        folder = base if text.endswith("/") else base.parent
        stem = "" if text.endswith("/") else base.name
        found = []
        with contextlib.suppress(OSError):
            for entry in sorted(folder.iterdir()):
                if entry.name.startswith(stem) and (entry.is_dir() or entry.suffix.lower() in AUDIO_SUFFIXES):
                    shown = str(entry) if str(folder) != "." or text.startswith("./") else entry.name
                    found.append(shown + ("/" if entry.is_dir() else ""))
        return sorted(set(names + found))

    complete_play = complete_spectrum = complete_timeline = complete_files

    def complete_speakers(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return [key for key in self.profiles.keys() if key.startswith(text)]

    complete_forget = complete_speakers

    def complete_enroll(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        """``enroll SPEAKER FILE...``: speaker keys first, then files."""
        if len(line[:begidx].split()) == 1:
            return self.complete_speakers(text, line, begidx, endidx)
        return self.complete_files(text, line, begidx, endidx)

    def complete_classify(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        """Files, or speaker keys after ``--speaker``."""
        before = line[:begidx].split()
        if before and before[-1] == "--speaker":
            return self.complete_speakers(text, line, begidx, endidx)
        if text.startswith("-"):
            return ["--speaker"] if "--speaker".startswith(text) else []
        return self.complete_files(text, line, begidx, endidx)

    def do_list(self, arg: str) -> None:
        """list: the files the bot knows, numbered (use a number, a name or a path in other commands)"""
        if not self.files:
            self.out("no files: start the bot with FILES or DIRS (serq bot samples/)")
            return
        for i, path in enumerate(self.files, 1):
            try:
                info = sf.info(str(path))
                desc = f"{info.duration:5.2f} s  {info.samplerate} Hz"
            except Exception:
                desc = "unreadable"
            label = expected_label(path)
            self.out(f"  {i:>3}  {path.name:<44} {desc}" + (f"  ({label})" if label else ""))

    # ------------------------------------------------------------------ local: play, spectrum

    def do_play(self, arg: str) -> None:
        """play FILE: play a clip on the local sound device (Ctrl-C stops it)"""
        args = shlex.split(arg)
        if len(args) != 1:
            raise Usage("usage: play FILE")
        path = self.resolve(args[0])
        try:
            played = play(path)
        except PlaybackUnavailable as exc:
            self.out(f"warning: {exc}")
            return
        channels = {1: "mono", 2: "stereo"}.get(played.channels, f"{played.channels} ch")
        state = "stopped" if played.interrupted else "played"
        self.out(f"{state} {path.name} ({played.duration:.2f} s, {played.sample_rate} Hz {channels})")

    def do_spectrum(self, arg: str) -> None:
        """spectrum FILE [--png OUT]: log spectrum, pitch contour and spectral summary (--png: a figure)"""
        from serq.cli.spectrum_view import analyse_file, render, write_png  # lazy: the engine (worker extra)

        parser = _Parser(prog="spectrum", add_help=False)
        parser.add_argument("file")
        parser.add_argument("--png", metavar="OUT")
        ns = parser.parse_args(shlex.split(arg))
        view = analyse_file(self.resolve(ns.file), self.get_settings())
        self.out(render(view))
        if ns.png:
            self.out(f"figure written to {write_png(view, ns.png)}")

    # ------------------------------------------------------------------ through the service

    def client(self):
        """One broker connection for the session, opened on first use (BrokerUnavailable names SERQ_AMQP_URL)."""
        if self._client is None:
            self._client = Client(settings=self.get_settings())
        return self._client

    def do_classify(self, arg: str) -> None:
        """classify FILE|DIR ... [--speaker S]: the emotion of each clip, through the broker (label, confidence, a bar per emotion); --speaker S: with S's profile, saying which path answered (speaker-normalised, or plain as a fallback)"""
        parser = _Parser(prog="classify", add_help=False)
        parser.add_argument("paths", nargs="*")
        parser.add_argument("--speaker", metavar="SPEAKER")
        ns = parser.parse_args(shlex.split(arg))
        paths = self.resolve_many(ns.paths) if ns.paths else list(self.files)
        if not paths:
            raise Usage("usage: classify FILE|DIR ... [--speaker SPEAKER]")
        client = self.client()
        speakers = None
        if ns.speaker is not None:
            speakers = SpeakerProfiles(client, store=self.profiles)
            if speakers.get(ns.speaker) is None:
                self.out(f"note: no profile for {ns.speaker!r} (enroll them first): the plain model answers")
        tally = AgreementTally()
        for path in paths:
            try:
                if speakers is not None:
                    result = speakers.classify(ns.speaker, path)
                else:
                    result = client.classify(path, filename=path.name)
            except SerqError as exc:
                if getattr(exc, "code", "") in {"no_broker", "connection_lost"}:
                    raise
                self.fail(SerqError(f"{path.name}: {exc}", code=exc.code))
                continue
            data = result.model_dump()
            text = format_result(data)
            verdict = tally.add(data, expected_label(path))
            if verdict:
                text += f"\n  {verdict}"
            if speakers is not None:
                text += "\n  " + answered_by(result)
            self.out(text)
        summary = tally.summary()
        if summary:
            self.out(summary)

    def do_timeline(self, arg: str) -> None:
        """timeline FILE [--png OUT] [--local] [--speaker S]: emotion over time in a long recording (strip chart, segments, summary), streamed to the workers through the broker; computed here with --local or when no broker answers; --png OUT: a figure; --speaker S: with S's profile"""
        parser = _Parser(prog="timeline", add_help=False)
        parser.add_argument("file")
        parser.add_argument("--png", metavar="OUT")
        parser.add_argument("--local", action="store_true")
        parser.add_argument("--speaker", metavar="SPEAKER")
        ns = parser.parse_args(shlex.split(arg))
        path = self.resolve(ns.file)
        if path.is_dir():
            raise Usage(f"timeline takes one recording, and {ns.file} is a directory: name a file in it")
        profile = self.profiles.get(ns.speaker) if ns.speaker is not None else None
        if ns.speaker is not None and profile is None:
            self.out(f"note: no profile for {ns.speaker!r} (enroll them first): the plain model answers")
        client = None
        if not ns.local:
            try:
                client = self.client()
            except SerqError as exc:
                if exc.code != "no_broker":
                    raise
                # Like `serq timeline` without --broker: the active model of this machine.
                self.out(f"note: {exc}; computing the timeline here instead")
        self.out(f"timeline of {path.name}: " + ("streamed to the workers through the broker" if client
                                                 else "computed here with the active model"))
        self.out(show_timeline(path, png=ns.png, client=client, profile=profile))

    def do_enroll(self, arg: str) -> None:
        """enroll SPEAKER FILE|DIR ... [--updates]: build or extend SPEAKER's profile from 5-12 clips of calm, normal speech, through the broker (feature statistics only, no audio); --updates: later clips classified with it update it"""
        parser = _Parser(prog="enroll", add_help=False)
        parser.add_argument("speaker")
        parser.add_argument("paths", nargs="+")
        parser.add_argument("--updates", action="store_true")
        ns = parser.parse_args(shlex.split(arg))
        paths = self.resolve_many(ns.paths)
        speakers = SpeakerProfiles(self.client(), store=self.profiles)
        before = speakers.get(ns.speaker)
        for path in paths:  # one at a time: a bad clip is one error line, the others still count
            try:
                speakers.enroll(ns.speaker, [path], updates=ns.updates)
            except SerqError as exc:
                if getattr(exc, "code", "") in {"no_broker", "connection_lost"}:
                    raise
                self.fail(SerqError(f"{path.name}: {exc}", code=exc.code))
        profile = speakers.get(ns.speaker)
        if profile is None:
            return
        added = profile.count - (before.count if before else 0)
        silent = f"; {len(paths) - added} held no speech or failed" if added < len(paths) else ""
        self.out(f"{ns.speaker}: profile of {profile.count} clips ({added} added{silent}; features "
                 f"{profile.feature_version}, updates {'on' if profile.updates else 'off'}); kept {self._kept()}")
        if speakers.clips_short(profile):
            self.out(too_few_clips(ns.speaker, profile.count, speakers.min_clips))

    def do_profiles(self, arg: str) -> None:
        """profiles: the speakers with a profile: clips, feature version, updates, last change"""
        keys = self.profiles.keys()
        if not keys:
            self.out(f"no speaker profiles yet (kept {self._kept()}); `enroll SPEAKER FILE...` makes one")
            return
        self.out(f"{len(keys)} speaker profile(s), kept {self._kept()}:")
        for key in keys:
            p = self.profiles.get(key)
            self.out(f"  {key:<24} {p.count:>3} clips  features {p.feature_version}  "
                     f"updates {'on ' if p.updates else 'off'}  updated {p.updated:%Y-%m-%d %H:%M} UTC")

    def do_forget(self, arg: str) -> None:
        """forget SPEAKER: delete SPEAKER's profile (all serq holds about them: workers keep none)"""
        args = shlex.split(arg)
        if len(args) != 1:
            raise Usage("usage: forget SPEAKER")
        if not self.profiles.delete(args[0]):
            raise SerqError(f"no profile for {args[0]!r} (see `profiles`)", code="not_found")
        self.out(f"forgot {args[0]!r}: profile deleted")

    def _kept(self) -> str:
        where = self.profiles.directory
        return f"in {where}" if where else "in memory until the bot quits (`serq bot --profiles DIR` keeps them)"

    def do_train(self, arg: str) -> None:
        """train [--emotions a,b] [--speakers 01,02] [--activate [POLICY]] [--max-iter N] ...: a training job through the trainer; progress, then accuracy and confusion matrix (options as `serq train`)"""
        # The same parser, request and result printing as `serq train --wait`: one code path.
        with contextlib.redirect_stderr(self.stdout):
            try:
                args = build_parser().parse_args(["train", "--wait", *shlex.split(arg)])
            except SystemExit:
                raise Usage("usage: train [--emotions a,b,...] [--speakers ID,...] [--activate [POLICY]] "
                            "(the options of `serq train --help`)") from None
        if args.local or args.json:
            raise Usage("the bot trains through the trainer service; for --local or --json use `serq train`")
        before = self._registry().active_version()
        with contextlib.redirect_stdout(self.stdout), contextlib.redirect_stderr(self.stdout):
            status = args.func(args)
        if status:
            self.failures += 1
            return
        after = self._registry().active_version()
        if after and after != before:  # activated in the registry we share with the trainer
            self._await_model(after)

    def _await_model(self, version: str, timeout: float = 60.0, probe_every: float = 0.5) -> None:
        """Workers load an activated model in the background: probe until one answers with it."""
        if not self.files:
            return
        deadline = time.monotonic() + timeout
        while True:
            got = self.client().classify(self.files[0], filename=self.files[0].name).model_version
            if got == version:
                self.out(f"the workers now serve model {version}")
                return
            if time.monotonic() > deadline:
                self.out(f"warning: after {timeout:.0f} s a worker still answers with model {got}, not {version}")
                return
            time.sleep(probe_every)

    def _registry(self):
        return Registry(self.get_settings().model_dir)

    def do_models(self, arg: str) -> None:
        """models: the model versions in SERQ_MODEL_DIR; * marks the active one"""
        with contextlib.redirect_stdout(self.stdout):
            run_list(argparse.Namespace(json=False))

    def do_accuracy(self, arg: str) -> None:
        """accuracy: the active model's speaker-independent metrics (cross-validated over speakers)"""
        meta = self._registry().active_metadata()
        if meta.metrics is None:
            self.out(f"model {meta.version}: no evaluation recorded")
            return
        self.out(f"model {meta.version} ({', '.join(meta.labels)})")
        self.out(format_report(meta.metrics.model_dump()))

    # ------------------------------------------------------------------ leaving, help

    def do_quit(self, arg: str) -> bool:
        """quit: leave the bot (also exit, Ctrl-D)"""
        return True

    do_exit = do_quit

    def do_EOF(self, arg: str) -> bool:  # noqa: N802 (cmd's name for end of input)
        if self.interactive:
            self.out("")
        return True

    def do_help(self, arg: str) -> None:
        """help [COMMAND]: the commands, or one command's usage"""
        if arg:
            fn = getattr(self, f"do_{arg}", None)
            if fn is None or not fn.__doc__:
                raise Usage(f"no command {arg!r}")
            self.out(fn.__doc__)
            return
        width = max(60, shutil.get_terminal_size((100, 24)).columns - 1)
        for name in self.commands():
            doc = getattr(self, f"do_{name}").__doc__
            usage, _, what = doc.partition(": ")
            if len(usage) > 28:  # a long usage gets a line of its own
                self.out(f"  {usage}")
                usage = ""
            # Wrapped at words to the terminal, continued under the description column.
            self.out(textwrap.fill(what, width, initial_indent=f"  {usage:<28} ", subsequent_indent=" " * 31,
                                   break_long_words=False, break_on_hyphens=False))

    def commands(self) -> list[str]:
        order = ["list", "play", "spectrum", "classify", "timeline", "enroll", "profiles", "forget", "train", "models",
                 "accuracy", "help", "quit"]
        extra = sorted(n[3:] for n in self.get_names()
                       if n.startswith("do_") and n[3:] not in order and n[3:] not in {"EOF", "exit"})
        return [n for n in order if hasattr(self, f"do_{n}")] + extra


def main(paths: list[str], script: str | None = None, profiles: str | None = None) -> int:
    """Run the bot over ``paths`` (default: the sample clips), reading ``script`` if given.

    ``profiles``: the directory speaker profiles are kept in (default: in memory).
    """
    if not paths and SAMPLES_DIR.is_dir():
        paths = [str(SAMPLES_DIR)]
    if script:
        with open(script, encoding="utf-8") as fh:
            return Bot(paths, stdin=fh, interactive=False, profiles_dir=profiles).run()
    return Bot(paths, profiles_dir=profiles).run()
