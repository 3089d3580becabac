"""Typed errors. The CLI turns every one of them into a one-line message and exit code 2."""


class Notice(UserWarning):
    """Something the user should know about a command that worked (the model was traced): the CLI
    says it once the command has succeeded, so that a refusal stays one line."""


class EqcompileError(Exception):
    """Base class: a problem with the user's input, not a bug in eqcompile."""


class CheckpointError(EqcompileError):
    """The file or folder is not a readable checkpoint (bad header, truncated, missing file)."""


class ConfigError(EqcompileError):
    """The model's configuration is invalid or asks for an option eqcompile does not support."""


class UntrustedInput(EqcompileError):
    """The checkpoint asks eqcompile to run code it cannot vouch for (a pre-tokenizer regex of no
    known family); the user may accept it explicitly (``--trust-tokenizer-pattern``)."""


class UnsupportedArchitecture(EqcompileError):
    """The checkpoint belongs to a model family eqcompile has no lowering for."""


class ReferenceUnavailable(EqcompileError):
    """Verification needs the reference implementation (transformers + torch), which is missing."""


class TooLarge(EqcompileError):
    """The literal expansion would be too big to build (the user can insist with --force)."""


class TeXError(EqcompileError):
    """TeX failed on a generated document, or is missing. Not the input's fault: the CLI exits 1."""

    def __init__(self, message: str, out_of_memory: bool = False):
        super().__init__(message)
        self.out_of_memory = out_of_memory  # pdflatex hit its memory limits: lualatex may manage


class TeXInputError(EqcompileError):
    """A string from the input that TeX cannot typeset (longer than the line TeX reads): exit 2.

    Found before TeX runs where possible (naming the key), else from TeX's log."""
