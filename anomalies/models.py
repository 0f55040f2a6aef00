"""Cost anomaly models arrive with the rollup and anomaly detection issue."""
