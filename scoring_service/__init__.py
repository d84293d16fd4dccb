"""The rules engine (pure) and the consumer that drives it."""

from stage_router.compiled import choose_build

choose_build(__name__, __path__[0])
