// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.os;

public class Process {
    public Process() { throw new RuntimeException("Stub!"); }
    public static final int myPid() { throw new RuntimeException("Stub!"); }
    public static final void killProcess(int pid) { throw new RuntimeException("Stub!"); }
}
