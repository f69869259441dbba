plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

val executorchVersion: String by project

android {
    namespace = "dev.flora.chat"
    compileSdk = 34

    defaultConfig {
        applicationId = "dev.flora.chat"
        minSdk = 26
        targetSdk = 34
        versionCode = 1
        versionName = "0.1.0"
        ndk { abiFilters += listOf("arm64-v8a") }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            signingConfig = signingConfigs.getByName("debug")
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_11
        targetCompatibility = JavaVersion.VERSION_11
    }

    kotlinOptions { jvmTarget = "11" }

    packaging { jniLibs { useLegacyPackaging = true } }
}

dependencies {
    implementation("org.pytorch:executorch-android:$executorchVersion")
    testImplementation("junit:junit:4.13.2")
}
