"""Image backbones for LiDAR-camera fusion, in plain torch: ResNet-18 / 50 with torchvision parameter names and an
FPN with mmdet parameter names (:mod:`.resnet`, :mod:`.fpn`), and what they output (:mod:`.shapes`)."""
