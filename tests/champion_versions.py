"""A new `@champion` version of a registered model, for rollouts to roll in: the champion's weights registered again."""

from training.tracking import mlflow_store, registry


def new_champion_version(uri: str, name: str) -> str:
    """A new version of `name` in the registry at `uri` (the current champion's weights and tags), made `@champion`:
    its number."""
    client = mlflow_store.configure(uri)
    current = client.get_model_version_by_alias(name, registry.CHAMPION)
    new = client.create_model_version(name, source=current.source, run_id=current.run_id)
    for key, value in current.tags.items():
        client.set_model_version_tag(name, new.version, key, value)
    client.set_registered_model_alias(name, registry.CHAMPION, new.version)
    return str(new.version)
