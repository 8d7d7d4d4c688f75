"""Event-loop helpers every edge shares (stopping background tasks whose libraries may
lose a cancellation); no router state."""
