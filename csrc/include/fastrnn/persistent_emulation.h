// The device the persistent kernel's CPU emulation plans for (csrc/cpu/persistent_emulation.cpp;
// fastrnn._C.set_persistent_emulation, for tests): small limits make a small grid split H over
// several blocks, the tile edges included.
#pragma once

#include "fastrnn/persistent.h"

namespace fastrnn {
namespace persistent {

DeviceLimits emulated_device();
// Sets the limits; returns the ones before.
DeviceLimits set_emulated_device(const DeviceLimits& limits);

}  // namespace persistent
}  // namespace fastrnn
