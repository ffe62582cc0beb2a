// Single files that appear complete or not at all.
#include "io/atomic_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"

namespace shardload {
namespace {

namespace fs = std::filesystem;

class AtomicFileTest : public ::testing::Test {
 protected:
  AtomicFileTest()
      : dir_(fs::temp_directory_path() / ("shardload-atomic-" + std::to_string(::getpid()))) {
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  ~AtomicFileTest() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }
  size_t entries() const {
    return static_cast<size_t>(std::distance(fs::directory_iterator(dir_), {}));
  }
  static std::string content(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  fs::path dir_;
};

TEST_F(AtomicFileTest, AppearsOnlyAtCommit) {
  const std::string path = file("out.bin");
  AtomicFile f(path);
  EXPECT_EQ(fs::path(f.temp_path()).parent_path(), dir_);
  EXPECT_EQ(fs::path(f.temp_path()).filename().string().rfind(".out.bin.tmp-", 0), 0u);
  f.write("hello ", 6);
  const std::string big(3 << 20, 'x');  // bypasses the buffer
  f.write(big.data(), big.size());
  EXPECT_FALSE(fs::exists(path));
  f.commit();
  EXPECT_EQ(content(path), "hello " + big);
  EXPECT_EQ(entries(), 1u);  // no temporary left
}

TEST_F(AtomicFileTest, AnAbandonedWriteLeavesTheOldFileAndNoTemporary) {
  const std::string path = file("model.pt");
  std::ofstream(path) << "old";
  ::chmod(path.c_str(), 0640);
  {
    AtomicFile f(path);
    f.write("new", 3);
  }
  EXPECT_EQ(content(path), "old");
  EXPECT_EQ(entries(), 1u);
  {
    AtomicFile f(path);
    f.write("new", 3);
    f.commit();
  }
  EXPECT_EQ(content(path), "new");
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);  // the replaced file's mode is kept
}

TEST_F(AtomicFileTest, FailuresNameThePath) {
  const std::string path = file("missing-dir/out.bin");
  try {
    AtomicFile f(path);
    FAIL() << "no exception";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  // Renaming over a directory fails: the temporary goes, the directory stays.
  const std::string taken = file("taken");
  fs::create_directories(taken + "/inside");
  AtomicFile f(taken);
  f.write("x", 1);
  EXPECT_THROW(f.commit(), FormatError);
  EXPECT_TRUE(fs::is_directory(taken));
  EXPECT_EQ(entries(), 1u);
  EXPECT_THROW(f.write("y", 1), FormatError);
}

}  // namespace
}  // namespace shardload
