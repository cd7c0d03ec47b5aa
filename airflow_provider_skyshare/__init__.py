"""Apache Airflow provider: GPU work across Kubernetes clusters shared by several orgs."""

from __future__ import annotations

__version__ = "0.1.0"


def get_provider_info() -> dict:
    """What Airflow's providers manager reads. No "plugins" key: the UI plugin is registered once,
    as an `airflow.plugins` entry point (pyproject.toml), which Airflow 3.3 loads whatever
    [core] lazy_discover_providers says; a provider's "plugins" load only with it False, and
    then a second registration of the same plugin shows as an import error."""
    return {
        "package-name": "airflow-provider-skyshare",
        "name": "Skyshare",
        "description": "Owner-first GPU placement across shared Kubernetes clusters, with Kueue "
        "priorities and automatic rescheduling of preempted work.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Skyshare",
                "external-doc-url": "https://kueue.sigs.k8s.io/",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": "Skyshare",
                "python-modules": ["airflow_provider_skyshare.operators.gpu"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Skyshare",
                "python-modules": ["airflow_provider_skyshare.triggers.pod"],
            }
        ],
        "cli": ["airflow_provider_skyshare.cli_definition.get_skyshare_cli_commands"],
        "extra-links": ["airflow_provider_skyshare.links.SkyshareTimelineLink"],
        "config": {
            "skyshare": {
                "description": "Defaults of the skyshare provider.",
                "options": {
                    "fleet_file": {
                        "description": "The platform's fleet YAML files, comma-separated; "
                        "the first is the default. A task may only pick one of them "
                        "(fleet_file=). Empty: development only, the task's own fleet_file "
                        "is used.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/opt/airflow/fleet.yaml",
                        "default": "",
                    },
                    "fleet_variable": {
                        "description": "An Airflow Variable holding the platform's default "
                        "fleet (its YAML or JSON), read through Airflow's secrets backends "
                        "(environment AIRFLOW_VAR_*, the metastore, or the configured "
                        "backend). Set, it is the default instead of the first fleet_file; a "
                        "task may still pick one of the fleet_file files.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "skyshare_fleet",
                        "default": "",
                    },
                    "default_deferrable": {
                        "description": "Whether MultiClusterGpuOperator defers by default. "
                        "Empty: as [operators] default_deferrable (Airflow's setting for "
                        "every deferrable operator; its default is False, True is "
                        "recommended).",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "",
                    },
                },
            }
        },
    }
