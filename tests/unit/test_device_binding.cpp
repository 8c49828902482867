// Binding ranks to GPUs by local rank (slearn/device_binding.hpp): the environment comes from a map, the
// visible-device count is an argument, so nothing here needs a GPU or touches the process environment.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "slearn/device_binding.hpp"
#include "slearn/error.hpp"

namespace slearn {
namespace {

LocalRankInfo info_from(const std::map<std::string, std::string>& env) {
  return read_local_rank_info([&env](const char* name) -> const char* {
    const auto found = env.find(name);
    return found == env.end() ? nullptr : found->second.c_str();
  });
}

std::string error_of(const LocalRankInfo& info, int visible) {
  try {
    (void)choose_local_device(info, visible);
  } catch (const InputError& error) {
    return error.what();
  }
  return "";
}

TEST(DeviceBinding, NoLauncherIsLocalRankZeroOfOne) {
  const LocalRankInfo info = info_from({});
  EXPECT_EQ(info.local_rank, 0);
  EXPECT_EQ(info.local_size, 1);
  EXPECT_TRUE(info.source.empty());
  EXPECT_FALSE(info.cuda_visible_devices_set);
  EXPECT_EQ(choose_local_device(info, 1), 0);
  EXPECT_EQ(choose_local_device(info, 8), 0);
}

TEST(DeviceBinding, OpenMpiComesBeforeSlurm) {
  const LocalRankInfo info = info_from({{"OMPI_COMM_WORLD_LOCAL_RANK", "2"},
                                        {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
                                        {"SLURM_LOCALID", "1"},
                                        {"SLURM_NTASKS_PER_NODE", "8"}});
  EXPECT_EQ(info.local_rank, 2);
  EXPECT_EQ(info.local_size, 4);
  EXPECT_EQ(info.source, "OMPI_COMM_WORLD_LOCAL_RANK");
}

TEST(DeviceBinding, SlurmLocalIdWithoutOpenMpi) {
  const LocalRankInfo info = info_from({{"SLURM_LOCALID", "3"}, {"SLURM_NTASKS_PER_NODE", "4"}});
  EXPECT_EQ(info.local_rank, 3);
  EXPECT_EQ(info.local_size, 4);
  EXPECT_EQ(info.source, "SLURM_LOCALID");
  // --gpus-per-node=4: every rank sees the node's four GPUs and takes its own.
  EXPECT_EQ(choose_local_device(info, 4), 3);
}

TEST(DeviceBinding, LocalSizeIsAtLeastRankPlusOne) {
  EXPECT_EQ(info_from({{"SLURM_LOCALID", "5"}}).local_size, 6);
}

TEST(DeviceBinding, EachLocalRankGetsItsOwnDevice) {
  for (int rank = 0; rank < 4; ++rank) {
    const LocalRankInfo info = info_from({{"OMPI_COMM_WORLD_LOCAL_RANK", std::to_string(rank)},
                                          {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}});
    EXPECT_EQ(choose_local_device(info, 4), rank);
    EXPECT_EQ(choose_local_device(info, 8), rank);  // fewer ranks than GPUs: the first ones
  }
}

TEST(DeviceBinding, OneVisibleDevicePerTaskIsDeviceZero) {
  // srun --gpus-per-task=1: Slurm sets CUDA_VISIBLE_DEVICES per task, so local rank 3 sees one GPU.
  const LocalRankInfo info = info_from(
      {{"SLURM_LOCALID", "3"}, {"SLURM_NTASKS_PER_NODE", "4"}, {"CUDA_VISIBLE_DEVICES", "3"}});
  EXPECT_TRUE(info.cuda_visible_devices_set);
  EXPECT_EQ(info.cuda_visible_devices, "3");
  EXPECT_EQ(choose_local_device(info, 1), 0);
}

TEST(DeviceBinding, MoreLocalRanksThanDevicesIsAnInputError) {
  const LocalRankInfo info = info_from({{"OMPI_COMM_WORLD_LOCAL_RANK", "2"},
                                        {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
                                        {"CUDA_VISIBLE_DEVICES", "0,1"}});
  const std::string message = error_of(info, 2);
  EXPECT_NE(message.find("local rank 2 of 4"), std::string::npos) << message;
  EXPECT_NE(message.find("2 visible"), std::string::npos) << message;
  EXPECT_NE(message.find("CUDA_VISIBLE_DEVICES=\"0,1\""), std::string::npos) << message;
}

TEST(DeviceBinding, RanksThatFitStillFailWhenTheNodeIsOversubscribed) {
  // Local rank 0 of 4 with 2 GPUs: it would fit, but its neighbours would not, so every rank fails alike.
  const LocalRankInfo info = info_from({{"OMPI_COMM_WORLD_LOCAL_RANK", "0"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}});
  const std::string message = error_of(info, 2);
  EXPECT_NE(message.find("local rank 0 of 4"), std::string::npos) << message;
  EXPECT_NE(message.find("CUDA_VISIBLE_DEVICES unset"), std::string::npos) << message;
}

TEST(DeviceBinding, SeveralRanksOnOneUnrestrictedGpuIsAnInputError) {
  const LocalRankInfo info = info_from({{"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  EXPECT_NE(error_of(info, 1).find("local rank 1 of 2"), std::string::npos);
}

TEST(DeviceBinding, NoVisibleDeviceIsAnInputError) {
  const LocalRankInfo info = info_from({{"CUDA_VISIBLE_DEVICES", "-1"}});
  const std::string message = error_of(info, 0);
  EXPECT_NE(message.find("no CUDA device"), std::string::npos) << message;
  EXPECT_NE(message.find("CUDA_VISIBLE_DEVICES=\"-1\""), std::string::npos) << message;
}

TEST(DeviceBinding, MalformedLauncherVariableIsAnInputError) {
  EXPECT_THROW(info_from({{"OMPI_COMM_WORLD_LOCAL_RANK", "two"}}), InputError);
  EXPECT_THROW(info_from({{"SLURM_LOCALID", "-1"}}), InputError);
  EXPECT_THROW(info_from({{"SLURM_LOCALID", "1x"}}), InputError);
  EXPECT_EQ(info_from({{"OMPI_COMM_WORLD_LOCAL_RANK", ""}}).source, "");  // empty counts as unset
}

}  // namespace
}  // namespace slearn
