import CLI
import DSConvertCommands
import Foundation

exit(Entry.single(QuantizeCommand.self, invocation: "dsconvert-quantize"))
