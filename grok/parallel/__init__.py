"""Where arrays live and how processes cooperate: the mesh, partition rules, multi-host jobs."""
