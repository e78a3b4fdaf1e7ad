import CLI
import DSConvertCommands
import Foundation

exit(CommandLineTool.runSingle(QuantizeCommand.self, invocation: "dsconvert-quantize", arguments: Array(CommandLine.arguments.dropFirst())))
