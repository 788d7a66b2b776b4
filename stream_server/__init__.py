"""Real-time lip-sync streaming server: transport, sessions, audio in, scheduler, CLI."""
