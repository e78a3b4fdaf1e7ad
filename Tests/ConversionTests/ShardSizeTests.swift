import Conversion
import XCTest

/// The default `--max-shard-size`: laid out like the input (README "Formats and conventions").
final class ShardSizeTests: XCTestCase {
    func testLikeInput() {
        let policy = ShardSize.likeInput
        // The lite slice: 4 files of at most 1 GB; absorb writes about as much, FP8 about half.
        XCTAssertEqual(policy.resolve(inputShardBytes: [1_000_000_000, 1_000_000_000, 1_000_000_000, 340_000_000], outputBytes: 3_340_000_000), 1_000_000_000)
        XCTAssertEqual(policy.resolve(inputShardBytes: [1_000_000_000, 1_000_000_000, 1_000_000_000, 340_000_000], outputBytes: 1_700_000_000), 1_000_000_000)
        // Two 3 GB files quantized to 3 GB: one file would do, but it is over 1 GB, so two files.
        XCTAssertEqual(policy.resolve(inputShardBytes: [3_000_000_000, 3_000_000_000], outputBytes: 2_999_999_999), 1_500_000_000)
        // ... while a small output may be one file (under 1 GB, hashing it is short).
        XCTAssertEqual(policy.resolve(inputShardBytes: [3_000_000_000, 3_000_000_000], outputBytes: 900_000_000), 3_000_000_000)
        // A one-file input gives a one-file output (its hash overlaps the writes).
        XCTAssertEqual(policy.resolve(inputShardBytes: [6_000_000_000], outputBytes: 3_000_000_000), 6_000_000_000)
        XCTAssertEqual(policy.resolve(inputShardBytes: [], outputBytes: 10), 5_000_000_000)
        XCTAssertEqual(ShardSize.limit(123).resolve(inputShardBytes: [1_000_000_000, 5], outputBytes: 3_000_000_000), 123, "an explicit size wins")
    }
}

extension ShardSizeTests {
    /// A chain of stages sizes its last output after the original input, as `convert` does in one pass.
    func testBasisIsCarriedByTheManifest() throws {
        let basis = ShardSize.Basis(largestShardBytes: 400_000, files: 5)
        let manifest = ConversionManifest(stages: [], files: [], layoutBasis: basis)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dsconvert-basis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try manifest.encoded().write(to: dir.appendingPathComponent(ConversionManifest.fileName))
        try Data(count: 1000).write(to: dir.appendingPathComponent("model.safetensors"))
        XCTAssertEqual(ShardSize.Basis.of(dir), basis, "the recorded basis wins over the files")
        try FileManager.default.removeItem(at: dir.appendingPathComponent(ConversionManifest.fileName))
        XCTAssertEqual(ShardSize.Basis.of(dir), ShardSize.Basis(largestShardBytes: 1000, files: 1))
        // Other safetensors files beside the checkpoint (a golden, a forward output) are not its shards
        // (found by an audit: the fixtures' goldens set the layout of every conversion of them).
        try Data(count: 5000).write(to: dir.appendingPathComponent("golden.safetensors"))
        XCTAssertEqual(ShardSize.Basis.of(dir), ShardSize.Basis(largestShardBytes: 1000, files: 1))
        try FileManager.default.removeItem(at: dir.appendingPathComponent("model.safetensors"))
        try JSONSerialization.data(withJSONObject: ["weight_map": ["a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-2.safetensors"]])
            .write(to: dir.appendingPathComponent("model.safetensors.index.json"))
        for (name, bytes) in [("m-1.safetensors", 300), ("m-2.safetensors", 700)] { try Data(count: bytes).write(to: dir.appendingPathComponent(name)) }
        XCTAssertEqual(ShardSize.Basis.of(dir), ShardSize.Basis(largestShardBytes: 700, files: 2), "the index's shards only")
    }
}

extension ShardSizeTests {
    /// A manifest is input too: absurd recorded numbers fall back to the files, never trap.
    func testImplausibleBasisIsIgnored() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dsconvert-basis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let absurd = ShardSize.Basis(largestShardBytes: Int.max, files: Int.max)
        try ConversionManifest(stages: [], files: [], layoutBasis: absurd).encoded().write(to: dir.appendingPathComponent(ConversionManifest.fileName))
        try Data(count: 1000).write(to: dir.appendingPathComponent("model.safetensors"))
        XCTAssertEqual(ShardSize.Basis.of(dir), ShardSize.Basis(largestShardBytes: 1000, files: 1))
        XCTAssertEqual(ShardSize.likeInput.resolve(basis: absurd, outputBytes: Int.max), 5_000_000_000)
    }
}
