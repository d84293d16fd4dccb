"""The lifecycle state machine and the records it emits. Pure: no I/O."""

from stage_router.compiled import choose_build

choose_build(__name__, __path__[0])
