"""What starts and drives lifecycles: the `sopflow` CLI, the dev stack, rehearsals and (later) webhook intake."""
