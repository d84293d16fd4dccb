"""What tests share: real infrastructure, waiting, producing and reading, replays, and a
running service."""
