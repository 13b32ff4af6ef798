"""`invokeai-ti --gui`: a keyboard-driven Textual form that fills the CLI's TrainingConfig; the CLI
then trains it exactly as typed flags. The form's rules live in form.py; no training logic here.

Flow (as in 2.3): the form checks its values inline and stays open until they are usable; Start
closes it and returns the config; run_gui prints the equivalent command and hands the config back
to the CLI, which trains with the normal progress output. Cancelling (Esc, Ctrl-C, the Cancel button) trains nothing and exits with 130,
the code of an interrupted command, so `invokeai-ti --gui && next-step` does not go on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Footer, Input, Label, Select, Static

from invokeai_ti.config import LEARNABLE_PROPERTIES, LR_SCHEDULERS, TrainingConfig
from invokeai_ti.errors import UserError
from invokeai_ti.files.previous_run import find_previous_run, remove_outputs
from invokeai_ti.front.command import command_line
from invokeai_ti.front.gui import choices, form
from invokeai_ti.invokeai import root as layout
from invokeai_ti.models.tokenizers import load_tokenizers

CANCELLED_EXIT_CODE = 130
NAME_WIDTH = 18


@dataclass
class StartRequest:
    """What Start hands back: the config, and earlier outputs the user agreed to delete first."""

    config: TrainingConfig
    remove: list[Path]


def run_gui(config: TrainingConfig) -> TrainingConfig | None:
    """Show the form; the config to train (the CLI trains it as if typed), None if cancelled."""
    if not has_terminal():
        raise UserError(
            "--gui needs an interactive terminal: run it in one, or give the settings as flags "
            "(see invokeai-ti --help)."
        )
    request = TrainingForm(config).run()
    if request is None:
        print("invokeai-ti: cancelled; nothing was trained.", file=sys.stderr)
        return None
    return confirm_start(request)


def has_terminal() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def confirm_start(request: StartRequest) -> TrainingConfig:
    """The confirmed deletions and the equivalent command, before the CLI trains the config."""
    config = request.config
    if request.remove:
        remove_outputs(request.remove)
        print(f"Deleted {len(request.remove)} earlier output(s) from {config.output_dir}.")
    print("Equivalent command (runs the same training without the form):")
    print(f"  {command_line(config)}", flush=True)
    return config


class ConfirmFreshStart(ModalScreen[bool]):
    """Says exactly what a fresh start deletes or replaces; Back is focused, so Enter is safe."""

    BINDINGS: ClassVar = [Binding("escape", "dismiss(False)", "Back")]

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Start a new run? Resume is off, so this is lost:", classes="title")
            yield Static("\n".join(f"- {line}" for line in self.lines), markup=False, id="losses")
            yield Label("Tick 'Resume' in the form to continue the earlier run instead.")
            with Horizontal(classes="buttons"):
                yield Button("Back", "primary", action="screen.dismiss(False)", id="back",
                             compact=True)  # fmt: skip
                yield Button("Delete and start fresh", "error", action="screen.dismiss(True)",
                             id="confirm", compact=True)  # fmt: skip

    def on_mount(self) -> None:
        self.query_one("#back", Button).focus()


def _input(widget_id: str, value: str, kind: str = "text", hint: str = "") -> Input:
    return Input(value, placeholder=hint, type=kind, id=widget_id, compact=True)


def _select(widget_id: str, choices: list[tuple[str, Any]], value: Any) -> Select:
    return Select(choices, value=value, allow_blank=False, id=widget_id, compact=True)


def _check(widget_id: str, label: str, value: bool) -> Checkbox:
    return Checkbox(label, value, id=widget_id, compact=True)


def _hint(widget_id: str, text: str = "") -> Label:
    return Label(text, id=widget_id or None, classes="hint", markup=False)


def _choices(values: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    return [(value, value) for value in values]


def _row(name: str, widget: Widget, *hints: Widget) -> Vertical:
    """One field: a label column, the widget, optional hints, and its (hidden) error line."""
    return Vertical(
        Horizontal(Label(name, classes="name"), widget, *hints, classes="row"),
        Static("", markup=False, id=f"{widget.id}-error", classes="error"),
        classes="field",
    )


class TrainingForm(App[StartRequest | None]):
    """The form. Fields users change most come first, as 2.3's doc circled them."""

    TITLE = "invokeai-ti"
    ENABLE_COMMAND_PALETTE = False  # Ctrl-P is "previous field", as in 2.3
    BINDINGS: ClassVar = [
        Binding("ctrl+n", "app.focus_next", "Next field", priority=True),
        Binding("ctrl+p", "app.focus_previous", "Previous", priority=True),
        Binding("ctrl+s", "start", "Start"),
        Binding("escape", "cancel", "Cancel"),
        # priority: Input binds Ctrl-C to copy; here it must always cancel.
        Binding("ctrl+c", "cancel", "Cancel", show=False, priority=True),
    ]
    CSS = f"""
    #title {{ height: 1; padding: 0 1; background: $primary; color: $text; text-style: bold; }}
    #form {{ height: 1fr; padding: 0 1; }}
    .field {{ height: auto; }}
    .row {{ height: 1; }}
    .name {{ width: {NAME_WIDTH}; color: $text-muted; }}
    .row Input, .row Select, .row Checkbox {{ width: 1fr; }}
    .hint {{ width: auto; padding: 0 0 0 1; color: $text-muted; }}
    .error {{ display: none; height: auto; color: $error; padding: 0 0 0 {NAME_WIDTH}; }}
    .error.shown {{ display: block; }}
    #actions {{ height: auto; padding: 0 1; }}
    #form-error {{ width: 1fr; color: $error; }}
    #actions Button {{ margin: 0 0 0 1; }}
    ConfirmFreshStart {{ align: center middle; }}
    #dialog {{ width: 76; height: auto; padding: 1 2; border: thick $error; background: $surface; }}
    #dialog .title {{ text-style: bold; }}
    #losses {{ margin: 1 0; }}
    #dialog .buttons {{ height: 1; margin-top: 1; }}
    #dialog Button {{ margin: 0 2 0 0; }}
    """

    def __init__(self, config: TrainingConfig) -> None:
        super().__init__()
        self.base = config
        self.root = layout.find_root(config.root_dir)
        self.models, self.initial_model = choices.model_choices(self.root, config.model)
        self.model = choices.inspect_model(self.root, self.initial_model)
        self.precisions = choices.machine_precisions()
        self.xformers = choices.xformers_usable()
        self.initial = form.initial_values(
            config, self.root, self.initial_model, self.model.native, self.precisions
        )
        self.auto: dict[str, Any] = {}  # widget id -> the value we set last (see form.follow)
        self.tokenizers: dict[str, Future] = {}
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
        self.checking = False

    def compose(self) -> ComposeResult:
        title = f"Textual inversion training · root {form.show_path(self.root)}"
        yield Static(title, id="title", markup=False)
        with VerticalScroll(id="form"):
            yield from self._fields()
        with Horizontal(id="actions"):
            yield Static("", id="form-error", markup=False)
            yield Button("Start", "success", action="app.start", id="start", compact=True)
            yield Button("Cancel", "error", action="app.cancel", id="cancel", compact=True)
        yield Footer()

    def _fields(self) -> ComposeResult:
        """The rows, most-changed first, as 2.3's documentation circled them."""
        v = self.initial
        # The model's native size follows the model; a --resolution flag counts as chosen by hand.
        self.auto["resolution"] = self.model.native or TrainingConfig.resolution
        no_gpu = "" if len(self.precisions) > 1 else "fp16/bf16 need a CUDA GPU"
        yield _row("Model", _select("model", _choices(self.models), v.model))
        yield _row("Trigger term", _input("trigger", v.trigger, hint="e.g. psychedelic"),
                   _hint("trigger-hint"))  # fmt: skip
        yield _row("Data folder", _input("data_dir", v.data_dir), _hint("data_dir-hint"))
        yield _row("Max steps", _input("max_train_steps", v.max_train_steps, "integer"))
        yield _row("Learning rate", _input("learning_rate", v.learning_rate, "number"))
        yield _row("Initializer", _input("initializer", v.initializer))
        yield _row("Resume", _check("resume", "from the last saved checkpoint", v.resume),
                   _hint("resume-hint"))  # fmt: skip
        yield _row("Output folder", _input("output_dir", v.output_dir))
        yield _row("Learns", _select("learnable_property", _choices(LEARNABLE_PROPERTIES),
                                     v.learnable_property))  # fmt: skip
        yield _row("Resolution", _select("resolution", self._resolutions(v.resolution),
                                         v.resolution), _hint("resolution-hint"))  # fmt: skip
        yield _row("Center crop", _check("center_crop", "crop to a centred square", v.center_crop))
        yield _row("Mixed precision", _select("mixed_precision", _choices(self.precisions),
                                              v.mixed_precision), _hint("", no_gpu))  # fmt: skip
        yield _row("Batch size", _input("train_batch_size", v.train_batch_size, "integer"))
        yield _row("Scale lr", _check("scale_lr", "by batch x accumulation x GPUs", v.scale_lr))
        if self.xformers:
            yield _row("xformers", _check("xformers", "memory-efficient attention", v.xformers))
        yield _row("LR scheduler", _select("lr_scheduler", _choices(LR_SCHEDULERS), v.lr_scheduler))
        yield _row("Grad accumulation", _input("gradient_accumulation_steps",
                                               v.gradient_accumulation_steps, "integer"))  # fmt: skip
        yield _row("Warmup steps", _input("lr_warmup_steps", v.lr_warmup_steps, "integer"))
        yield _row("Vectors per term", _input("num_vectors", v.num_vectors, "integer"))

    def _resolutions(self, *extra: int | None) -> list[tuple[str, int]]:
        return [(f"{v} px", v) for v in choices.resolution_choices(self.model.native, *extra)]

    def on_mount(self) -> None:
        self.auto["data_dir"] = self.query_one("#data_dir", Input).value
        self.auto["output_dir"] = self.query_one("#output_dir", Input).value
        # A --resume_from_checkpoint flag is kept until the trigger or output folder changes.
        self._trigger_changed(follow_checkpoints=self.base.resume_from_checkpoint is None)
        self._data_changed()
        self._scheduler_changed()
        self._show_model(self.initial_model)
        self.query_one("#model", Select).focus()

    def on_unmount(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # --- auto-updates ------------------------------------------------------------------------

    def _follow(self, widget_id: str, new_auto: Any) -> None:
        """Move a field to its new automatic value unless the user edited it by hand."""
        widget = self.query_one(f"#{widget_id}")
        widget.value = form.follow(widget.value, self.auto.get(widget_id, widget.value), new_auto)
        self.auto[widget_id] = new_auto

    def on_input_changed(self, event: Input.Changed) -> None:
        handlers = {
            "trigger": self._trigger_changed,
            "data_dir": self._data_changed,
            "output_dir": self._output_changed,
        }
        self._show_error(event.input.id, None)
        if event.input.id in handlers:
            handlers[event.input.id]()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "model":
            self._model_changed()
        elif event.select.id == "lr_scheduler":
            self._scheduler_changed()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self._show_error(event.checkbox.id, None)

    def _trigger_changed(self, follow_checkpoints: bool = True) -> None:
        trigger = form.trigger_term(self.query_one("#trigger", Input).value)
        self._follow("data_dir", form.show_path(layout.default_data_dir(self.root, trigger)))
        self._follow("output_dir", form.show_path(layout.default_output_dir(self.root, trigger)))
        self.query_one("#trigger-hint", Label).update(f"prompt: <{trigger}>" if trigger else "")
        problem = form.trigger_problem(trigger) if trigger else None
        self._show_error("trigger", problem)
        self._output_changed(follow_checkpoints)

    def _data_changed(self) -> None:
        folder = form.read_path(self.query_one("#data_dir", Input).value)
        count = form.count_usable_images(folder)
        text = "missing" if count is None else f"{count} image{'s' * (count != 1)}"
        self.query_one("#data_dir-hint", Label).update(text)

    def _output_changed(self, follow_checkpoints: bool = True) -> None:
        """The resume box is ticked exactly when the output folder holds this trigger's checkpoints."""
        trigger = form.trigger_term(self.query_one("#trigger", Input).value)
        folder = form.read_path(self.query_one("#output_dir", Input).value)
        previous = find_previous_run(folder, self.root, trigger)
        resumable = previous.resumable_for(f"<{trigger}>")
        if follow_checkpoints:
            self.query_one("#resume", Checkbox).value = resumable
        hint = f"{previous.checkpoints[-1].name} found" if resumable else "no checkpoint"
        if previous.checkpoints and not resumable:
            hint = f"checkpoints of {previous.owner}"
        self.query_one("#resume-hint", Label).update(hint)

    def _model_changed(self) -> None:
        """Another model: its native resolution pre-selected unless one was chosen by hand."""
        name = self.query_one("#model", Select).value
        self.model = choices.inspect_model(self.root, name)
        select = self.query_one("#resolution", Select)
        current = select.value
        select.set_options(self._resolutions(current))
        select.value = current
        self._follow("resolution", self.model.native or TrainingConfig.resolution)
        self._show_model(name)

    def _show_model(self, name: str) -> None:
        """The model's problem or native size; its tokenizer starts loading for the checks."""
        if self.model.folder is not None:
            self._tokenizers_for(name)
        self._show_error("model", self.model.problem)
        native = self.model.native
        hint = f"native {native}" if native else "native size unknown"
        self.query_one("#resolution-hint", Label).update(hint)

    def _scheduler_changed(self) -> None:
        """The constant schedule has no warmup, so its steps field is disabled, not ignored silently."""
        constant = self.query_one("#lr_scheduler", Select).value == "constant"
        self.query_one("#lr_warmup_steps", Input).disabled = constant

    def _tokenizers_for(self, name: str) -> Future:
        """Loaded once per model, in a thread, from when the model is picked."""
        if name not in self.tokenizers:
            self.tokenizers[name] = self.executor.submit(
                load_tokenizers, self.model.folder, self.base.tokenizer_name
            )
        return self.tokenizers[name]

    # --- errors, Start, Cancel ------------------------------------------------------------------

    def _show_error(self, widget_id: str | None, message: str | None) -> None:
        target = f"#{widget_id}-error" if widget_id != "form" else "#form-error"
        matches = self.query(target)
        if not matches:
            return
        error = matches.first(Static)
        error.update(message or "")
        error.set_class(bool(message), "shown")

    def form_values(self) -> form.FormValues:
        """The widgets' current values (the xformers box is absent when it cannot be used)."""
        values = {}
        for f in dataclasses.fields(form.FormValues):
            found = self.query(f"#{f.name}")
            values[f.name] = found.first().value if found else False
        return form.FormValues(**values)

    def action_start(self) -> None:
        # A worker: the tokenizer may still be loading, and the form must stay responsive.
        if not self.checking and not isinstance(self.screen, ConfirmFreshStart):
            self.checking = True
            self.run_worker(self._start(), exclusive=True)

    async def _start(self) -> None:
        """Check everything; show problems inline and stay open, or close with the config."""
        try:
            config, errors = await self._checked_config()
        finally:
            self.checking = False
        for name in (*(f.name for f in dataclasses.fields(form.FormValues)), "form"):
            self._show_error(name, errors.get(name))
        if config is None:
            for widget in self.query(",".join(f"#{name}" for name in errors if name != "form")):
                widget.focus()  # the first field with a problem, scrolled into view
                break
            return
        previous = find_previous_run(config.output_dir, self.root, config.trigger)
        lines, remove = form.fresh_start_losses(config, previous)
        if not lines:
            self.exit(StartRequest(config, []))
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.exit(StartRequest(config, remove))

        self.push_screen(ConfirmFreshStart(lines), confirmed)

    async def _checked_config(self) -> tuple[TrainingConfig | None, dict[str, str]]:
        self._show_error("form", "Checking...")
        values = self.form_values()
        config, errors = form.build_config(self.base, self.root, values)
        if config is None:
            return None, errors
        if self.model.folder is None:
            return None, {"model": self.model.problem or "unusable model"}
        try:
            tokenizers = await asyncio.wrap_future(self._tokenizers_for(values.model))
        except (OSError, ValueError) as exc:
            return None, {"model": f"cannot read this model's tokenizer: {exc}"}
        errors = form.token_problems(config, tokenizers)
        return (None, errors) if errors else (config, {})

    def action_cancel(self) -> None:
        self.exit(None)
