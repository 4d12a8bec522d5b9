"""Stage tasks: resolve inputs -> call anyflow -> write artifacts atomically -> return a small frozen handle."""
