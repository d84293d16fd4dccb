"""The lifecycle state machine and the records it emits. Pure: no I/O."""
