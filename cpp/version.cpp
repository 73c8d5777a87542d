// Keeps the igw_core static library non-empty until the core sources land.
namespace igw {
int core_abi_version() { return 1; }
}  // namespace igw
