"""ViewNeTI as a library, one folder per concept: data, base_model, method, training, evaluation, mini_world (layers: docs/architecture.md)."""
