// Precompiled header shared by every torch-including target of the build.
#pragma once

#include <spdlog/spdlog.h>
#include <torch/torch.h>
