"""Make sure the compose stack has a model to serve: train, register and promote one if the alias is empty.

Run by the one-shot `trainer` service of docker-compose.yml (and usable anywhere):

    MLFLOW_TRACKING_URI=http://mlflow:5000 python deployment/scripts/bootstrap_model.py

Idempotent: when ``models:/$MODEL_NAME@$MODEL_ALIAS`` already resolves, it does nothing. Otherwise it
generates synthetic telemetry (normal rows for training, a labelled set with 5% anomalies for the
evaluation logged with the run), trains a detector, registers it and points the alias at it.
Environment: MODEL_NAME (telemetry), MODEL_ALIAS (champion), MODEL_TYPE (ae), TRAIN_ROWS (5000),
EPOCHS (100), MLFLOW_TRACKING_URI (else the embedded ./mlflow.db store).
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    from anomaly_ae import Detector, registry
    from anomaly_ae.runtime import set_threads
    from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry
    from anomaly_ae.exceptions import AnomalyAEError, RegistryUnavailableError

    name = os.environ.get("MODEL_NAME", "telemetry")
    alias = os.environ.get("MODEL_ALIAS", "champion")
    uri = f"models:/{name}@{alias}"
    try:
        ref = registry.resolve_model(uri)
        print(f"{uri} already points to version {ref.version}; nothing to do")
        return 0
    except RegistryUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except AnomalyAEError:
        pass  # no such model or alias yet (or no embedded store): create it

    set_threads(1)
    rows = int(os.environ.get("TRAIN_ROWS", "5000"))
    normal = make_telemetry(rows, 0.0, seed=1).drop(columns=list(LABEL_COLUMNS))
    labelled = make_telemetry(max(500, rows // 2), 0.05, seed=2)
    detector = Detector(model=os.environ.get("MODEL_TYPE", "ae"), epochs=int(os.environ.get("EPOCHS", "100")),
                        random_state=0).fit(normal)
    run = registry.log_training_run(detector, normal, experiment="anomaly-ae-bootstrap", register=name,
                                    eval_data=labelled, label_col="is_anomaly", drop_cols=["anomaly_kind"],
                                    run_name="bootstrap")
    print(run.describe())
    promotion = registry.promote(name, run.registered.version, alias)  # what the line above suggests, done here
    print(f"promoted: {promotion.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
