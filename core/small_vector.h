// A vector that keeps its first few elements in place (core/shape.h's Shape, an index row's block
// checksums).
#pragma once

#include <algorithm>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <type_traits>
#include <vector>

namespace shardload {

/// A vector of trivially copyable T with std::vector's interface that holds up to N elements in
/// place, without an allocation; more go to the heap. For the small arrays an index row holds
/// (shapes, block checksums): an index of 100,000 tensors holds 400,000 of them, and every
/// load phase copies them. Converts to and from std::vector<T>.
template <typename T, size_t N>
class SmallVector {
  static_assert(std::is_trivially_copyable_v<T> && N > 0);

 public:
  static constexpr size_t kInline = N;
  using value_type = T;
  using size_type = size_t;
  using difference_type = std::ptrdiff_t;
  using reference = T&;
  using const_reference = const T&;
  using pointer = T*;
  using const_pointer = const T*;
  using iterator = T*;
  using const_iterator = const T*;
  using reverse_iterator = std::reverse_iterator<iterator>;
  using const_reverse_iterator = std::reverse_iterator<const_iterator>;

  SmallVector() noexcept {}
  SmallVector(std::initializer_list<T> values) { assign(values.begin(), values.end()); }
  explicit SmallVector(size_t n, T value = T()) { assign(n, value); }
  template <std::input_iterator It>
  SmallVector(It first, It last) {
    assign(first, last);
  }
  SmallVector(const std::vector<T>& values) { assign(values.begin(), values.end()); }
  SmallVector(const SmallVector& other) { assign(other.begin(), other.end()); }
  SmallVector(SmallVector&& other) noexcept { take(other); }
  SmallVector& operator=(const SmallVector& other) {
    if (this != &other) assign(other.begin(), other.end());
    return *this;
  }
  SmallVector& operator=(SmallVector&& other) noexcept {
    if (this != &other) {
      release();
      take(other);
    }
    return *this;
  }
  SmallVector& operator=(std::initializer_list<T> values) {
    assign(values.begin(), values.end());
    return *this;
  }
  ~SmallVector() { release(); }
  operator std::vector<T>() const { return std::vector<T>(begin(), end()); }

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  size_t capacity() const { return capacity_; }
  T* data() { return on_heap() ? heap_ : inline_; }
  const T* data() const { return on_heap() ? heap_ : inline_; }
  iterator begin() { return data(); }
  iterator end() { return data() + size_; }
  const_iterator begin() const { return data(); }
  const_iterator end() const { return data() + size_; }
  const_iterator cbegin() const { return begin(); }
  const_iterator cend() const { return end(); }
  reverse_iterator rbegin() { return reverse_iterator(end()); }
  reverse_iterator rend() { return reverse_iterator(begin()); }
  const_reverse_iterator rbegin() const { return const_reverse_iterator(end()); }
  const_reverse_iterator rend() const { return const_reverse_iterator(begin()); }
  T& operator[](size_t i) { return data()[i]; }
  const T& operator[](size_t i) const { return data()[i]; }
  T& front() { return data()[0]; }
  const T& front() const { return data()[0]; }
  T& back() { return data()[size_ - 1]; }
  const T& back() const { return data()[size_ - 1]; }

  void reserve(size_t n) {
    if (n <= capacity_) return;
    auto* grown = new T[n];
    std::memcpy(grown, data(), size_ * sizeof(T));
    release();
    heap_ = grown;
    capacity_ = n;
  }
  void shrink_to_fit() {}
  void clear() { size_ = 0; }
  void resize(size_t n, T value = T()) {
    reserve(n);
    if (n > size_) std::fill(data() + size_, data() + n, value);
    size_ = n;
  }
  void push_back(T value) {
    if (size_ == capacity_) reserve(2 * capacity_);
    data()[size_++] = value;
  }
  T& emplace_back(T value) {
    push_back(value);
    return back();
  }
  void pop_back() { --size_; }
  void assign(size_t n, T value) {
    size_ = 0;
    resize(n, value);
  }
  template <std::input_iterator It>
  void assign(It first, It last) {
    size_ = 0;
    if constexpr (std::forward_iterator<It>) {
      reserve(static_cast<size_t>(std::distance(first, last)));
      T* out = data();
      for (; first != last; ++first) out[size_++] = static_cast<T>(*first);
    } else {
      for (; first != last; ++first) push_back(static_cast<T>(*first));
    }
  }
  iterator insert(const_iterator pos, T value) { return insert(pos, size_t{1}, value); }
  iterator insert(const_iterator pos, size_t n, T value) {
    const auto at = static_cast<size_t>(pos - begin());
    open_gap(at, n);
    std::fill(data() + at, data() + at + n, value);
    return data() + at;
  }
  template <std::forward_iterator It>
  iterator insert(const_iterator pos, It first, It last) {
    const auto at = static_cast<size_t>(pos - begin());
    const auto n = static_cast<size_t>(std::distance(first, last));
    const SmallVector copy(first, last);  // the source may be this shape
    open_gap(at, n);
    std::copy(copy.begin(), copy.end(), data() + at);
    return data() + at;
  }
  iterator insert(const_iterator pos, std::initializer_list<T> values) {
    return insert(pos, values.begin(), values.end());
  }
  iterator erase(const_iterator pos) { return erase(pos, pos + 1); }
  iterator erase(const_iterator first, const_iterator last) {
    const auto at = static_cast<size_t>(first - begin());
    const auto n = static_cast<size_t>(last - first);
    std::copy(data() + at + n, end(), data() + at);
    size_ -= n;
    return data() + at;
  }
  void swap(SmallVector& other) noexcept {
    SmallVector t(std::move(other));
    other = std::move(*this);
    *this = std::move(t);
  }

  friend bool operator==(const SmallVector& a, const SmallVector& b) {
    return a.size_ == b.size_ && std::equal(a.begin(), a.end(), b.begin());
  }
  friend std::strong_ordering operator<=>(const SmallVector& a, const SmallVector& b) {
    return std::lexicographical_compare_three_way(a.begin(), a.end(), b.begin(), b.end());
  }

 private:
  bool on_heap() const { return capacity_ > kInline; }
  /// Frees the heap array, if any (size_ is the caller's to set).
  void release() {
    if (on_heap()) delete[] heap_;
    capacity_ = kInline;
  }
  /// Moves `other`'s extents here (this holds none) and leaves it empty.
  void take(SmallVector& other) noexcept {
    size_ = other.size_;
    capacity_ = other.capacity_;
    if (other.on_heap()) {
      heap_ = other.heap_;
    } else {
      std::memcpy(inline_, other.inline_, size_ * sizeof(T));
    }
    other.capacity_ = kInline;
    other.size_ = 0;
  }
  void open_gap(size_t at, size_t n) {
    if (size_ + n > capacity_) reserve(std::max(size_ + n, 2 * capacity_));
    std::copy_backward(data() + at, data() + size_, data() + size_ + n);
    size_ += n;
  }

  size_t size_ = 0;
  size_t capacity_ = kInline;
  union {
    T inline_[kInline];
    T* heap_;
  };
};

}  // namespace shardload
