"""Motion data: skeletons and kinematics (``skeleton``), the HumanML3D 263-/KIT 251-dim features
(``features``), the dataset reader (``humanml``), dataset validation (``check``) and the synthetic
generator (``synthetic``). A leaf package: it imports numpy and torch only."""
