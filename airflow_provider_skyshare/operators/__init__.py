from airflow_provider_skyshare.operators.gpu import MultiClusterGpuOperator

__all__ = ["MultiClusterGpuOperator"]
